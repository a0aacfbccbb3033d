// Client IP hash in JavaScript: the same mapping as the Rust
// `plugins/ip-hash`, so the two can replace each other without moving a
// single client.
//
// Requests from one client address always go to the same backend while the
// backend set and its health stay the same. The address (masked to
// `ipv4-prefix` / `ipv6-prefix` bits) is hashed with Murmur3's 64-bit
// finalizer and mapped onto the backends in proportion to their weight
// (Lemire's multiply-shift range reduction, then a binary search over
// cumulative weights). When the chosen backend is unusable the hash is
// re-mixed, up to 20 times as nginx does, then the next usable backend is
// taken.
//
// Parameters: `ipv4-prefix` (0..=32, default 32), `ipv6-prefix` (0..=128,
// default 128).
//
// Built by `build.sh` with jco's QuickJS backend (componentize-qjs). Its WIT
// mapping: records have camelCase keys, variants are `{ tag, val }`, a
// `result` export returns the ok value or throws the error, and `u64`/`s64`
// are plain numbers (exact up to 2^53). The 64-bit hash arithmetic therefore
// uses BigInt, masked to 64 bits where Rust wraps.

import { usable } from "switchyard:balancer/backends@0.1.0";

const M64 = (1n << 64n) - 1n;
const M128 = (1n << 128n) - 1n;
const REHASH_TRIES = 20;

// Per-instance state: guest memory is a per-thread cache (see the WIT).
let count = 0;
/** Cumulative weights (BigInt); null when all weights are equal. */
let prefix = null;
let ipv4Prefix = 32;
let ipv6Prefix = 128;

/** The top `bits` of a `width`-bit number, as a mask. */
function mask(bits, width) {
  if (bits === 0) return 0n;
  return ((M128 << BigInt(128 - bits)) & M128) >> BigInt(128 - width);
}

/** The address as a 128-bit number, masked to the configured prefix. */
function masked(ip) {
  if (ip.tag === "ipv4") {
    const [a, b, c, d] = ip.val;
    const v4 = (BigInt(a) << 24n) | (BigInt(b) << 16n) | (BigInt(c) << 8n) | BigInt(d);
    // Bit 64 keeps v4 and v6 apart.
    return (v4 & mask(ipv4Prefix, 32)) | (1n << 64n);
  }
  let v6 = 0n;
  for (const group of ip.val) v6 = (v6 << 16n) | BigInt(group);
  return v6 & mask(ipv6Prefix, 128);
}

/** Murmur3's 64-bit finalizer. */
function fmix(k) {
  k ^= k >> 33n;
  k = (k * 0xff51afd7ed558ccdn) & M64;
  k ^= k >> 33n;
  k = (k * 0xc4ceb9fe1a85ec53n) & M64;
  return k ^ (k >> 33n);
}

const rotl = (x, r) => ((x << r) | (x >> (64n - r))) & M64;

/** Mixes both 64-bit halves: every input bit affects every output bit. */
const mix = (v) => fmix((v & M64) ^ rotl(fmix(v >> 64n), 17n));

/** Backend for hash `h`, in proportion to the weights. */
function slot(h) {
  if (prefix === null) return Number((h * BigInt(count)) >> 64n);
  const point = (h * prefix[prefix.length - 1]) >> 64n;
  // First cumulative weight above `point` (Rust's `partition_point`).
  let lo = 0;
  let hi = prefix.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (prefix[mid] <= point) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function prefixParam(key, value, top) {
  if (value.tag === "integer") {
    const v = Number(value.val);
    if (Number.isInteger(v) && v >= 0 && v <= top) return v;
  }
  throw `\`${key}\` must be an integer in 0..=${top}`;
}

/** The `strategy` export of the `switchyard:balancer` world. */
export const strategy = {
  init(params) {
    for (const [key, value] of params) {
      if (key === "ipv4-prefix") ipv4Prefix = prefixParam(key, value, 32);
      else if (key === "ipv6-prefix") ipv6Prefix = prefixParam(key, value, 128);
      else throw `unknown parameter \`${key}\` (expected \`ipv4-prefix\` or \`ipv6-prefix\`)`;
    }
  },

  setBackends(backends) {
    count = backends.length;
    if (backends.every((b) => b.weight === backends[0].weight)) {
      prefix = null;
    } else {
      let acc = 0n;
      prefix = backends.map((b) => (acc += BigInt(Math.max(b.weight, 1))));
    }
  },

  pick(request) {
    if (count === 0) return { tag: "reject", val: "no backends configured" };
    let h = mix(masked(request.clientIp));
    const first = slot(h);
    if (request.avoid === 0 || usable(first)) return { tag: "backend", val: first };
    for (let round = 1; round <= REHASH_TRIES; round++) {
      h = mix(h | (BigInt(round) << 64n));
      const i = slot(h);
      if (usable(i)) return { tag: "backend", val: i };
    }
    for (let step = 1; step < count; step++) {
      const i = (first + step) % count;
      if (usable(i)) return { tag: "backend", val: i };
    }
    return { tag: "reject", val: "no usable backend" };
  },
};
