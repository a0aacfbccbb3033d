// {{name}}: a Switchyard admission plugin, in JavaScript. It decides,
// before a backend is picked, whether a request may go on.
//
// As written it limits each client address to `rate` requests a second
// with bursts of `burst`, using a rate limiter the proxy keeps (global
// across its worker threads, kept across reloads of this plugin). A request
// over the limit is answered 429 with `Retry-After`; one within it goes on
// with an `x-admitted-by: {{name}}` header the strategy and the backend
// see. Change `admit` (marked below) to decide as you like.
//
// Parameters (the upstream's `admission-params` in switchyard.toml):
//
// - `rate` (integer, default 10): requests per second per client;
// - `burst` (integer, default 20): requests a client may send at once.
//
// The contract is wit/balancer.wit (world `admission`): the proxy calls
// `init` once per instance (one per worker thread; declare limiters there)
// and `admit` for every request.
//
// In JavaScript the WIT reads: records have camelCase keys
// (`request.clientIp`, `retryAfter`), variants are `{ tag, val }`, a
// function returning `result` returns the ok value or throws the error
// (`init` refuses by throwing a string; `take` throws the milliseconds to
// wait), and u64/s64 are plain numbers.

import { declareRate, take } from "switchyard:balancer/limits@0.1.0";

/** The handle of the limiter declared in `init`. */
let limiter = 0;

/** An integer parameter in 1 ..= 1 000 000, or a thrown message. */
function integer(key, value) {
  const n = value.tag === "integer" ? Number(value.val) : NaN;
  if (Number.isInteger(n) && n >= 1 && n <= 1000000) return n;
  throw `{{name}}: \`${key}\` must be an integer in 1..=1000000`;
}

/** The client's address as text: the key its requests are counted by. */
function clientKey(ip) {
  if (ip.tag === "ipv4") return ip.val.join(".");
  return ip.val.map((group) => group.toString(16)).join(":");
}

/** The `gate` export of the world `admission`. */
export const gate = {
  /** Reads the parameters and declares the limiter. */
  init(params) {
    let rate = 10;
    let burst = 20;
    for (const [key, value] of params) {
      if (key === "rate") rate = integer(key, value);
      else if (key === "burst") burst = integer(key, value);
      else throw `{{name}}: unknown parameter \`${key}\` (expected \`rate\` or \`burst\`)`;
    }
    // `rate` requests per 1000 ms, `burst` at once. Every instance
    // declaring the same name and settings shares one limiter.
    limiter = declareRate("per-client", rate, 1000, burst);
  },

  /** Decides one request; keep it short (10 ms deadline). */
  admit(request) {
    // ---- The policy: change from here. ----------------------------------
    // Other inputs: import { path, method, header, host, query } from
    // "switchyard:balancer/request@0.1.0" (e.g. header("x-api-key")).
    try {
      take(limiter, clientKey(request.clientIp), 1);
    } catch (waitMs) {
      return {
        tag: "deny",
        val: {
          status: 429,
          reason: "too many requests from your address ({{name}})",
          retryAfter: Math.max(1, Math.ceil(Number(waitMs) / 1000)),
        },
      };
    }
    return { tag: "allow-with", val: [["x-admitted-by", "{{name}}"]] };
    // ---- to here. `{ tag: "allow" }` lets a request go on unchanged. ----
  },
};
