// {{name}}: a Switchyard load-balancing strategy, in JavaScript.
//
// As written it sends each request to the usable backend with the fewest
// requests in flight (counted by the proxy, across all its threads); among
// equally loaded backends it takes turns, so idle backends share the
// traffic exactly evenly, as round robin would. Change `pick` (marked
// below) to balance as you like.
//
// Parameters (the upstream's `params` in switchyard.toml, or
// `--param key=value` for `switchyard simulate`):
//
// - `max-in-flight` (integer, optional): backends with this many requests
//   in flight are skipped; when every backend is that busy the request is
//   answered 503 with a reason.
//
// The contract is wit/balancer.wit (world `balancer`). The proxy calls
// `init` once per instance, `setBackends` when the backend set changes,
// and `pick` for every request. There is one instance per worker thread,
// so the variables below are per thread; what must be global (the request
// `sequence`, in-flight counts, health) the proxy keeps and you read
// through the imports.
//
// In JavaScript the WIT reads: records have camelCase keys
// (`request.clientIp`), variants are `{ tag, val }`, `init` refuses by
// throwing a string, and u64/s64 are plain numbers (exact up to 2^53).

import { inFlight, usable } from "switchyard:balancer/backends@0.1.0";

/** Backends in the set (their index is 0 .. count - 1). */
let count = 0;
/** `max-in-flight`, if given. */
let maxInFlight = null;

/** The `strategy` export of the world `balancer`. */
export const strategy = {
  /** Reads the parameters; a thrown string refuses the plugin. */
  init(params) {
    for (const [key, value] of params) {
      if (key === "max-in-flight" && value.tag === "integer" && Number(value.val) >= 1) {
        maxInFlight = Number(value.val);
      } else {
        throw `{{name}}: unknown or invalid parameter \`${key}\` (expected: max-in-flight = 1 or more)`;
      }
    }
  },

  /** The upstream's backends ({ id, address, weight }), when they change. */
  setBackends(backends) {
    count = backends.length;
  },

  /** Chooses a backend for one request; keep it short (10 ms deadline). */
  pick(request) {
    if (count === 0) return { tag: "reject", val: "no backends configured" };
    // ---- The policy: change from here. ----------------------------------
    // Start the scan at a different backend for every request, so ties go
    // round: idle backends share requests exactly evenly.
    const start = Number(request.sequence) % count;
    let best = -1;
    let least = Infinity;
    for (let step = 0; step < count; step++) {
      const i = (start + step) % count;
      // `avoid === 0` means every backend is usable: no need to ask.
      if (request.avoid > 0 && !usable(i)) continue;
      const load = inFlight(i);
      if (maxInFlight !== null && load >= maxInFlight) continue;
      if (load < least) {
        best = i;
        least = load;
      }
    }
    if (best < 0) return { tag: "reject", val: "{{name}}: no usable backend below max-in-flight" };
    return { tag: "backend", val: best };
    // ---- to here. Other answers: { tag: "preference", val: [i, j] }.
    // Other inputs: import { path, header } from
    // "switchyard:balancer/request@0.1.0"; request.clientIp. -------------
  },
};
