/** Stub of `k6/metrics`: custom metrics recorded into the stubs' registry. */
import { record, type MetricType } from '../metrics.js';

class Metric {
  constructor(readonly name: string, private readonly type: MetricType) {}
  add(value: number | boolean, tags: Record<string, string> = {}): void {
    record(this.name, this.type, typeof value === 'boolean' ? (value ? 1 : 0) : value, tags);
  }
}

export class Trend extends Metric {
  constructor(name: string, readonly isTime = false) {
    super(name, 'trend');
  }
}
export class Counter extends Metric {
  constructor(name: string) {
    super(name, 'counter');
  }
}
export class Rate extends Metric {
  constructor(name: string) {
    super(name, 'rate');
  }
}
export class Gauge extends Metric {
  constructor(name: string) {
    super(name, 'gauge');
  }
}

export default { Trend, Counter, Rate, Gauge };
