// distgan's latent convention in the browser: the latent of a seed is
//   numpy.random.Generator(numpy.random.PCG64(seed)).standard_normal(nz, dtype=numpy.float32)
// (distgan/runtime.py), made here bit for bit by the same three steps numpy takes:
//   1. SeedSequence(seed): numpy's entropy hashing (uint32 arithmetic) -> 4 uint64 words;
//   2. PCG64 (128-bit LCG, XSL-RR output; BigInt here) seeded by them, 32-bit draws taken low half first;
//   3. numpy's float32 ziggurat (random_standard_normal_f) on those draws, with numpy's tables.
// tests/test_export_web.py runs this file under node against numpy on many seeds and nz.

import { FI, KI, WI } from "./ziggurat.js";

const M64 = (1n << 64n) - 1n;
const M128 = (1n << 128n) - 1n;
const PCG_MULT = (0x2360ed051fc65da4n << 64n) | 0x4385df649fccf645n;
const ZIG_R = Math.fround(3.6541528853610087963519472518);
const ZIG_INV_R = Math.fround(0.27366123732975827203338247596);

/** numpy's SeedSequence(seed).generate_state(4, uint64) for a seed in 0 .. 2**32 - 1 (one uint32 word of entropy). */
export function seedSequenceState(seed) {
  let hashConst = 0x43b0d7e5;
  const hashmix = (value) => {
    value = (value ^ hashConst) >>> 0;
    hashConst = Math.imul(hashConst, 0x931e8875) >>> 0;
    value = Math.imul(value, hashConst) >>> 0;
    return (value ^ (value >>> 16)) >>> 0;
  };
  const mix = (x, y) => {
    const r = (Math.imul(0xca01f9dd, x) - Math.imul(0x4973f715, y)) >>> 0;
    return (r ^ (r >>> 16)) >>> 0;
  };
  const pool = [seed >>> 0, 0, 0, 0].map(hashmix);
  for (let src = 0; src < 4; src++) {
    for (let dst = 0; dst < 4; dst++) if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
  }
  let stateConst = 0x8b51f9dd;
  const words = [];
  for (let i = 0; i < 8; i++) {
    let value = (pool[i % 4] ^ stateConst) >>> 0;
    stateConst = Math.imul(stateConst, 0x58f38ded) >>> 0;
    value = Math.imul(value, stateConst) >>> 0;
    words.push((value ^ (value >>> 16)) >>> 0);
  }
  return [0, 1, 2, 3].map((i) => BigInt(words[2 * i]) | (BigInt(words[2 * i + 1]) << 32n));
}

/** numpy's PCG64 bit generator seeded as PCG64(seed) is. */
export class PCG64 {
  constructor(seed) {
    const [s0, s1, s2, s3] = seedSequenceState(seed);
    this.inc = (((s2 << 64n) | s3) << 1n | 1n) & M128;
    this.state = 0n;
    this.step();
    this.state = (this.state + ((s0 << 64n) | s1)) & M128;
    this.step();
    this.buffered = null;  // numpy hands out a 64-bit draw as two 32-bit ones, the low half first
  }

  step() {
    this.state = (this.state * PCG_MULT + this.inc) & M128;
  }

  next64() {
    this.step();
    const high = this.state >> 64n;
    const value = high ^ (this.state & M64);
    const rot = high >> 58n;
    return ((value >> rot) | (value << ((64n - rot) & 63n))) & M64;
  }

  next32() {
    if (this.buffered !== null) {
      const value = this.buffered;
      this.buffered = null;
      return value;
    }
    const value = this.next64();
    this.buffered = Number(value >> 32n);
    return Number(value & 0xffffffffn);
  }

  nextFloat() {
    return (this.next32() >>> 8) * (1 / 16777216);
  }
}

/** numpy's random_standard_normal_f: one float32 N(0, 1) draw (float32 arithmetic through Math.fround). */
function standardNormalF(rng) {
  for (;;) {
    const r = rng.next32();
    const idx = r & 0xff;
    const rabs = (r >>> 9) & 0x7fffff;
    let x = Math.fround(rabs * WI[idx]);
    if ((r >>> 8) & 1) x = -x;
    if (rabs < KI[idx]) return x;
    if (idx === 0) {
      for (;;) {
        const xx = Math.fround(-ZIG_INV_R * Math.fround(Math.log1p(-rng.nextFloat())));
        const yy = -Math.fround(Math.log1p(-rng.nextFloat()));
        if (Math.fround(yy + yy) > Math.fround(xx * xx)) {
          return (rabs >>> 8) & 1 ? -Math.fround(ZIG_R + xx) : Math.fround(ZIG_R + xx);
        }
      }
    }
    const left = Math.fround(Math.fround(Math.fround(FI[idx - 1] - FI[idx]) * rng.nextFloat()) + FI[idx]);
    if (left < Math.exp(-0.5 * x * x)) return x;
  }
}

/** The latent of `seed` (0 .. 2**32 - 1): Float32Array(nz), equal to distgan.runtime.latents([seed], nz)[0]. */
export function latent(seed, nz) {
  const rng = new PCG64(seed);
  const z = new Float32Array(nz);
  for (let i = 0; i < nz; i++) z[i] = standardNormalF(rng);
  return z;
}
