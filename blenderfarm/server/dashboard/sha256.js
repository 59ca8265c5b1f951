// SHA-256 in plain JavaScript, fed in pieces (FIPS 180-4), and the hashing of a file.
//
// Web Crypto's crypto.subtle.digest exists only in secure contexts (https, localhost):
// a farm's dashboard at http://192.168.1.20:8400 has none. It also cannot hash in
// pieces, so a 4 GB file would have to be in memory whole. This one takes a file in
// slices (Blob.slice), one at a time, so memory stays at one slice whatever the size.
// It must stay a pure function of the bytes: the farm names every file by this digest
// (protocol/hashing.py), and a single wrong bit means a blob nobody can find.

const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const INIT = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
  0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/** An incremental SHA-256: update(bytes) any number of times, then hex() once. */
export class Sha256 {
  constructor() {
    this.state = new Int32Array(INIT);
    this.w = new Int32Array(64);
    this.tail = new Uint8Array(64); // bytes of a block not complete yet
    this.tailLength = 0;
    this.length = 0; // bytes seen; a double holds 2^53, far past any file
    this.done = false;
  }

  /** Add bytes (a Uint8Array); returns this. */
  update(bytes) {
    if (this.done) throw new Error("sha256: update after the digest");
    let i = 0;
    const n = bytes.length;
    this.length += n;
    if (this.tailLength) {
      const take = Math.min(64 - this.tailLength, n);
      this.tail.set(bytes.subarray(0, take), this.tailLength);
      this.tailLength += take;
      i = take;
      if (this.tailLength < 64) return this;
      this.blocks(this.tail, 0, 64);
      this.tailLength = 0;
    }
    const whole = i + ((n - i) & ~63);
    if (whole > i) this.blocks(bytes, i, whole);
    if (whole < n) {
      this.tail.set(bytes.subarray(whole), 0);
      this.tailLength = n - whole;
    }
    return this;
  }

  /** The digest as 32 bytes; the hash takes no more input after. */
  digest() {
    if (this.done) throw new Error("sha256: digest taken twice");
    this.done = true;
    const pad = new Uint8Array(this.tailLength < 56 ? 64 : 128);
    pad.set(this.tail.subarray(0, this.tailLength));
    pad[this.tailLength] = 0x80;
    // The length in bits as a 64-bit big-endian number: past 2^32 bits, so split it.
    const high = Math.floor(this.length / 0x20000000);
    const low = (this.length % 0x20000000) * 8;
    const view = new DataView(pad.buffer);
    view.setUint32(pad.length - 8, high);
    view.setUint32(pad.length - 4, low);
    this.blocks(pad, 0, pad.length);
    const out = new Uint8Array(32);
    const outView = new DataView(out.buffer);
    for (let j = 0; j < 8; j++) outView.setInt32(j * 4, this.state[j]);
    return out;
  }

  /** The digest in lowercase hex, the farm's blob name. */
  hex() {
    return toHex(this.digest());
  }

  /** Compress the 64-byte blocks of bytes[start, end). */
  blocks(bytes, start, end) {
    const w = this.w;
    const s = this.state;
    let h0 = s[0], h1 = s[1], h2 = s[2], h3 = s[3], h4 = s[4], h5 = s[5], h6 = s[6], h7 = s[7];
    for (let off = start; off < end; off += 64) {
      for (let t = 0; t < 16; t++) {
        const p = off + t * 4;
        w[t] = (bytes[p] << 24) | (bytes[p + 1] << 16) | (bytes[p + 2] << 8) | bytes[p + 3];
      }
      for (let t = 16; t < 64; t++) {
        const a = w[t - 15];
        const b = w[t - 2];
        const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
        const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
        w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
      }
      let a = h0, b = h1, c = h2, d = h3, e = h4, f = h5, g = h6, h = h7;
      for (let t = 0; t < 64; t++) {
        const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        const ch = (e & f) ^ (~e & g);
        const t1 = (h + S1 + ch + K[t] + w[t]) | 0;
        const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        const maj = (a & b) ^ (a & c) ^ (b & c);
        const t2 = (S0 + maj) | 0;
        h = g; g = f; f = e; e = (d + t1) | 0;
        d = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      h0 = (h0 + a) | 0; h1 = (h1 + b) | 0; h2 = (h2 + c) | 0; h3 = (h3 + d) | 0;
      h4 = (h4 + e) | 0; h5 = (h5 + f) | 0; h6 = (h6 + g) | 0; h7 = (h7 + h) | 0;
    }
    s[0] = h0; s[1] = h1; s[2] = h2; s[3] = h3; s[4] = h4; s[5] = h5; s[6] = h6; s[7] = h7;
  }
}

export function toHex(bytes) {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

/** The hex SHA-256 of a Uint8Array, in one go. */
export function sha256Hex(bytes) {
  return new Sha256().update(bytes).hex();
}

/** Bytes read and hashed at a time (5 ms of work or so): the page stays responsive. */
export const SLICE = 1024 * 1024;
/** Files up to this size go to Web Crypto whole (fast, native), where it exists. */
export const WHOLE_MAX = 64 * 1024 * 1024;

export class Aborted extends Error {
  constructor() {
    super("canceled");
    this.name = "Aborted";
  }
}

/**
 * The hex SHA-256 of a Blob (a File), reporting the bytes as they are hashed.
 * Web Crypto where the page has it and the file is small; otherwise this module's
 * hash, in slices. ``options``: onBytes(n) after each piece, signal (an AbortSignal:
 * throws Aborted), slice (bytes per read), native (false: never Web Crypto).
 */
export async function hashBlob(blob, options) {
  const { onBytes = () => {}, signal = null, slice = SLICE, native = true } = options || {};
  const check = () => { if (signal && signal.aborted) throw new Aborted(); };
  check();
  const subtle = globalThis.crypto && globalThis.crypto.subtle;
  if (native && subtle && blob.size <= WHOLE_MAX) {
    const digest = await subtle.digest("SHA-256", await blob.arrayBuffer());
    check();
    onBytes(blob.size);
    return toHex(new Uint8Array(digest));
  }
  const hash = new Sha256();
  for (let offset = 0; offset < blob.size; offset += slice) {
    // Each read is awaited: the page draws and takes clicks between two slices.
    const part = new Uint8Array(await blob.slice(offset, offset + slice).arrayBuffer());
    check();
    hash.update(part);
    onBytes(part.length);
  }
  return hash.hex();
}
