// ESLint (flat config) for the TypeScript in ts/, test/ and bench/, with type
// information from tsconfig.json, and the plain JavaScript of scripts/ (the
// install script runs before tsc): `npm run lint`, also run by `npm test`.
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig(
  { ignores: ['dist/', 'node_modules/', 'native/', 'crates/', 'fuzz/', 'target/', 'bench/results/'] },
  {
    files: ['ts/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts'],
    extends: [js.configs.recommended, tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // An unhandled rejection ends the process, so every promise is awaited,
      // returned, caught, or marked `void` with a reason (both rules are also in
      // recommendedTypeChecked; stated here because they matter most). The
      // promises of node:test's test() and describe() are the runner's: they
      // fulfil when the test ends, failed or not, and need no handling.
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['test', 'describe', 'it', 'suite'] }] },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': 'error',
      // `import { a, type B }`, the style the code already uses.
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
    },
  },
  {
    files: ['scripts/**/*.js'],
    extends: [js.configs.recommended],
    languageOptions: { sourceType: 'module', globals: { console: 'readonly' } },
  },
);
