// A flash-sale spike: orders arrive at a constant rate (RATE per second for DURATION),
// each a different buyer with its own Idempotency-Key, through POST /v1/orders.
//   k6 run --no-usage-report -e RATE=2000 -e DURATION=30s k6/spike.js
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import exec from 'k6/execution';
import { BASE_URL, TARGET, authHeaders, summarize } from './lib.js';

const sold = new Counter('orders_sold');
const soldOut = new Counter('orders_sold_out');
const serverErrors = new Counter('server_errors');

const RATE = Number(__ENV.RATE || 2000);
// P95_MS=0: no latency threshold (the test suite asserts sales, not speed).
const P95_MS = Number(__ENV.P95_MS ?? (TARGET === 'legacy' ? 15000 : 250));
const RUN = __ENV.RUN_ID || `${Date.now()}`;

export const options = {
  scenarios: {
    spike: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: Number(__ENV.VUS || 150),
      maxVUs: Number(__ENV.MAX_VUS || 1000),
    },
  },
  thresholds: {
    server_errors: ['count==0'],
    http_req_failed: ['rate==0'],
    ...(P95_MS > 0 ? { http_req_duration: [`p(95)<${P95_MS}`] } : {}),
  },
};

export default function () {
  // Each iteration one order of buyer n (its token says who: the body names nobody).
  const n = exec.scenario.iterationInTest;
  const res = http.post(
    `${BASE_URL}/v1/orders`,
    JSON.stringify({ product_id: Number(__ENV.PRODUCT || 1), quantity: 1 }),
    {
      headers: {
        'Content-Type': 'application/json',
        'Idempotency-Key': `k6-${RUN}-${n}`,
        ...authHeaders(n),
      },
      tags: { target: TARGET },
    },
  );
  if (res.status === 201) sold.add(1);
  else if (res.status === 409) soldOut.add(1);
  else if (res.status >= 500) serverErrors.add(1);
  check(res, { 'sold or sold out': (r) => r.status === 201 || r.status === 409 });
}

export function handleSummary(data) {
  return summarize(data);
}
