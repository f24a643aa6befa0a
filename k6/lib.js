// Shared by the hotdeal k6 scripts: where to send orders, and a short summary.
import http from 'k6/http';
import { SharedArray } from 'k6/data';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:5001').replace(/\/$/, '');
export const TARGET = __ENV.TARGET || 'order-redis'; // or "legacy"
// The workshop endpoint of each service (GET, one unit of product 1).
export const WORKSHOP_PATH = TARGET === 'legacy' ? '/order' : '/order-redis';

// The buyers' tokens, one a line (`hotdeal-ops token --users N`): buyer n sends token
// n % N. No TOKENS_FILE: no Authorization header (a service run with HOTDEAL_AUTH=off).
// One copy for all VUs (SharedArray): 10,000 tokens are ~6 MB.
const TOKENS = new SharedArray('tokens', () =>
  __ENV.TOKENS_FILE ? open(__ENV.TOKENS_FILE).split('\n').filter((t) => t.length > 0) : [],
);

export function authHeaders(n) {
  return TOKENS.length ? { Authorization: `Bearer ${TOKENS[n % TOKENS.length]}` } : {};
}

// Sold out (409) is an expected answer in a flash sale, not a failed request.
http.setResponseCallback(http.expectedStatuses({ min: 200, max: 299 }, 409));

function metric(data, name, field) {
  const m = data.metrics[name];
  return m && m.values[field] !== undefined ? m.values[field] : 0;
}

// A compact, grep-able end-of-test summary (k6 prints it instead of its default one).
export function summarize(data) {
  const lines = [
    `hotdeal k6 summary: target=${TARGET} base=${BASE_URL}`,
    `  requests=${metric(data, 'http_reqs', 'count')} rate=${metric(data, 'http_reqs', 'rate').toFixed(1)}/s`,
    `  sold=${metric(data, 'orders_sold', 'count')} sold_out=${metric(data, 'orders_sold_out', 'count')} ` +
      `server_errors=${metric(data, 'server_errors', 'count')}`,
    `  latency p50=${metric(data, 'http_req_duration', 'med').toFixed(1)}ms ` +
      `p95=${metric(data, 'http_req_duration', 'p(95)').toFixed(1)}ms ` +
      `max=${metric(data, 'http_req_duration', 'max').toFixed(1)}ms`,
  ];
  const failed = Object.entries(data.metrics)
    .filter(([, m]) => m.thresholds && Object.values(m.thresholds).some((t) => !t.ok))
    .map(([name]) => name);
  lines.push(`  thresholds: ${failed.length ? 'FAILED ' + failed.join(', ') : 'all passed'}`);
  const out = { stdout: lines.join('\n') + '\n' };
  if (__ENV.SUMMARY_JSON) {
    out[__ENV.SUMMARY_JSON] = JSON.stringify(data, null, 2);
  }
  return out;
}
