// Proof-of-work solver of the waiting page, run in a Web Worker so the page never blocks.
// Puzzle (urr_vwr_lambda/proof_of_work.py): find the first counter >= 0 such that
// SHA-256(SHA-256(challenge) || counter as 8 bytes big-endian) starts with `bits` zero bits.
// Our own SHA-256: every try is one 64-byte block (32 + 8 bytes and padding), which plain JS
// hashes far faster than a crypto.subtle.digest promise per try.
"use strict";

var K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
]);
var IV = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

// One compression of the 16 words w[0..15] (w has room for 64) into the 8-word state h.
function compress(h, w) {
  var i, a, b, c, d, e, f, g, hh, s0, s1, t1, t2, x, y;
  for (i = 16; i < 64; i++) {
    x = w[i - 15]; y = w[i - 2];
    s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
    s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
    w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
  }
  a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; hh = h[7];
  for (i = 0; i < 64; i++) {
    s1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
    t1 = (hh + s1 + ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;
    s0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
    t2 = (s0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
    hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
  }
  h[0] = (h[0] + a) | 0; h[1] = (h[1] + b) | 0; h[2] = (h[2] + c) | 0; h[3] = (h[3] + d) | 0;
  h[4] = (h[4] + e) | 0; h[5] = (h[5] + f) | 0; h[6] = (h[6] + g) | 0; h[7] = (h[7] + hh) | 0;
}

// SHA-256 of a byte array, as 8 words.
function sha256(bytes) {
  var length = bytes.length;
  var blocks = Math.ceil((length + 9) / 64);
  var padded = new Uint8Array(blocks * 64);
  padded.set(bytes);
  padded[length] = 0x80;
  var bitLength = length * 8;
  padded[padded.length - 4] = (bitLength >>> 24) & 0xff;
  padded[padded.length - 3] = (bitLength >>> 16) & 0xff;
  padded[padded.length - 2] = (bitLength >>> 8) & 0xff;
  padded[padded.length - 1] = bitLength & 0xff;
  padded[padded.length - 5] = Math.floor(bitLength / 0x100000000) & 0xff;
  var h = new Int32Array(IV);
  var w = new Int32Array(64);
  for (var block = 0; block < blocks; block++) {
    for (var i = 0; i < 16; i++) {
      var o = block * 64 + i * 4;
      w[i] = (padded[o] << 24) | (padded[o + 1] << 16) | (padded[o + 2] << 8) | padded[o + 3];
    }
    compress(h, w);
  }
  return h;
}

var PROGRESS_EVERY = 1 << 16;

function solve(challenge, bits) {
  var started = Date.now();
  var seed = sha256(new TextEncoder().encode(challenge));
  var shift = 32 - bits;
  var w = new Int32Array(64);
  var h = new Int32Array(8);
  var counter = 0;
  for (;;) {
    for (var i = 0; i < 8; i++) w[i] = seed[i];
    w[8] = Math.floor(counter / 0x100000000) | 0;
    w[9] = counter | 0;
    w[10] = 0x80000000 | 0;
    w[11] = 0; w[12] = 0; w[13] = 0; w[14] = 0;
    w[15] = 320;  // 40 bytes, in bits
    for (var j = 0; j < 8; j++) h[j] = IV[j];
    compress(h, w);
    if ((h[0] >>> shift) === 0) {
      return { counter: counter, tries: counter + 1, ms: Date.now() - started };
    }
    counter++;
    if (counter % PROGRESS_EVERY === 0) {
      self.postMessage({ type: "progress", tries: counter });
    }
    if (counter > 9007199254740991) throw new Error("no solution");
  }
}

self.onmessage = function (message) {
  var job = message.data || {};
  if (typeof job.challenge !== "string" || !(job.bits >= 1 && job.bits <= 31)) {
    self.postMessage({ type: "error", error: "bad job" });
    return;
  }
  var found = solve(job.challenge, job.bits);
  self.postMessage({ type: "done", counter: found.counter, tries: found.tries, ms: found.ms });
};
