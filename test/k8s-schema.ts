/**
 * Validation of Kubernetes objects against the API's OpenAPI schemas, for
 * the injection tests: every object meshpipe writes must be one the API
 * server accepts.
 *
 * Two checks, from two packages generated from the Kubernetes OpenAPI spec:
 * - kubernetes-models (and @kubernetes-models/cert-manager for the
 *   webhook's certificate objects): JSON-schema validation with ajv (types,
 *   required fields, enums), Kubernetes 1.34's API;
 * - unknown fields, which those schemas allow but the API server drops or
 *   refuses (kubectl's strict field validation): every key is looked up in
 *   the attribute maps of @kubernetes/client-node's generated models.
 * A kind neither package knows is an error, not a pass.
 */
import * as k8s from '@kubernetes/client-node';
import * as certManager from '@kubernetes-models/cert-manager/cert-manager.io/v1';
import * as admission from 'kubernetes-models/admissionregistration.k8s.io/v1';
import * as apps from 'kubernetes-models/apps/v1';
import * as batch from 'kubernetes-models/batch/v1';
import * as policy from 'kubernetes-models/policy/v1';
import * as rbac from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import * as core from 'kubernetes-models/v1';

type Model = new (data: object) => { validate(): void };

const GROUPS: Readonly<Record<string, Readonly<Record<string, unknown>>>> = {
  v1: core,
  'apps/v1': apps,
  'batch/v1': batch,
  'policy/v1': policy,
  'rbac.authorization.k8s.io/v1': rbac,
  'admissionregistration.k8s.io/v1': admission,
  'cert-manager.io/v1': certManager,
};

type Attr = { name: string; baseName: string; type: string };
type ModelClass = { getAttributeTypeMap(): Attr[] };

function clientModel(type: string): ModelClass | undefined {
  const c = (k8s as unknown as Record<string, unknown>)[type];
  return typeof c === 'function' && 'getAttributeTypeMap' in c ? (c as unknown as ModelClass) : undefined;
}

/** Unknown keys under `value`, checked against the client-node model `type`. */
function unknownFields(value: unknown, type: string, path: string, out: string[]): void {
  if (value === null || value === undefined) return;
  const array = /^Array<(.+)>$/.exec(type);
  if (array) {
    if (Array.isArray(value)) value.forEach((v, i) => unknownFields(v, array[1] as string, `${path}/${i}`, out));
    return;
  }
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (map) {
    if (typeof value === 'object') for (const [k, v] of Object.entries(value)) unknownFields(v, map[1] as string, `${path}/${k}`, out);
    return;
  }
  const model = clientModel(type);
  if (model === undefined || typeof value !== 'object' || Array.isArray(value)) return;
  const attrs = model.getAttributeTypeMap();
  for (const [key, v] of Object.entries(value)) {
    const attr = attrs.find((a) => a.baseName === key);
    if (attr === undefined) out.push(`${path}/${key}: unknown field (not in ${type})`);
    else unknownFields(v, attr.type, `${path}/${key}`, out);
  }
}

/** Every schema problem of one object (and of a List's items); empty when valid. */
export function schemaProblems(obj: unknown, where = ''): string[] {
  if (typeof obj !== 'object' || obj === null) return [`${where}: not an object`];
  const o = obj as { apiVersion?: string; kind?: string; items?: unknown[]; metadata?: { name?: string } };
  const name = `${where}${o.kind ?? '?'}/${o.metadata?.name ?? '?'}`;
  if (o.kind === 'List' || (o.kind?.endsWith('List') === true && Array.isArray(o.items))) {
    return (o.items ?? []).flatMap((item, i) => schemaProblems(item, `${name}/items/${i}: `));
  }
  const model = GROUPS[o.apiVersion ?? '']?.[o.kind ?? ''] as Model | undefined;
  if (model === undefined) return [`${name}: no schema known for ${o.apiVersion} ${o.kind}`];
  const problems: string[] = [];
  try {
    new model(obj).validate();
  } catch (err) {
    problems.push(`${name}: ${(err as Error).message}`);
  }
  const group = o.apiVersion?.includes('/') === true ? (o.apiVersion.split('/')[0] as string) : 'core';
  if (group !== 'cert-manager.io') {
    const type = `V1${o.kind}`;
    if (clientModel(type) === undefined) problems.push(`${name}: no client-node model ${type} to check fields against`);
    else unknownFields(obj, type, name, problems);
  }
  return problems;
}
