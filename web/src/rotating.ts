// The rotating identifier an app install advertises (docs/design.md §5), derived
// exactly as the Exposure Notification crypto spec derives a Rolling
// Proximity Identifier, with nothing but the browser's Web Crypto:
//
//   RPIK = HKDF-SHA256(key, salt = none, info = "EN-RPIK", 16 bytes)
//   RPI  = AES-128(RPIK, "EN-RPI" ‖ 6 zero bytes ‖ interval as u32 LE)
//   interval = floor(unix seconds / 600)        (a new one every 10 minutes)
//
// Web Crypto has no AES-ECB. For a single block, AES-CBC with an all-zero
// IV is the same thing: CBC encrypts (block XOR IV), and XOR with zeros
// changes nothing, so its first 16 output bytes are AES(key, block). CBC
// then appends a PKCS#7 padding block, which we drop.
//
// Works in browsers and in Node ≥ 20 (globalThis.crypto).

const INTERVAL_S = 600;
const subtle = (): SubtleCrypto => globalThis.crypto.subtle;
const ascii = (s: string): Bytes => new TextEncoder().encode(s);

/** Bytes backed by a plain ArrayBuffer, as Web Crypto wants them. */
export type Bytes = Uint8Array<ArrayBuffer>;

/** The 10-minute interval number of a moment (Unix milliseconds). */
export function intervalOf(unixMs: number): number {
  return Math.floor(unixMs / 1000 / INTERVAL_S);
}

/** When the interval ends, in Unix milliseconds (for a refresh timer). */
export function intervalEndMs(interval: number): number {
  return (interval + 1) * INTERVAL_S * 1000;
}

/** RPIK bytes: HKDF-SHA256 with an empty salt (the spec's "none"). */
export async function deriveRpik(key: Bytes): Promise<Bytes> {
  if (key.length !== 16) throw new Error("the app key must be 16 bytes");
  const ikm = await subtle().importKey("raw", key, "HKDF", false, ["deriveBits"]);
  const bits = await subtle().deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: ascii("EN-RPIK") },
    ikm,
    128,
  );
  return new Uint8Array(bits);
}

/** The identifier for one interval. */
export async function rotatingId(key: Bytes, interval: number): Promise<Bytes> {
  const rpik = await deriveRpik(key);
  return rpiFromRpik(rpik, interval);
}

/** AES-128 of the padded block under the RPIK (ECB of one block, see above). */
export async function rpiFromRpik(rpik: Bytes, interval: number): Promise<Bytes> {
  const block = new Uint8Array(16);
  block.set(ascii("EN-RPI"), 0); // bytes 6..11 stay zero
  new DataView(block.buffer).setUint32(12, interval >>> 0, true); // u32 little-endian
  const aes = await subtle().importKey("raw", rpik, "AES-CBC", false, ["encrypt"]);
  const out = await subtle().encrypt({ name: "AES-CBC", iv: new Uint8Array(16) }, aes, block);
  return new Uint8Array(out).slice(0, 16);
}

export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(hex: string): Bytes {
  const clean = hex.trim().toLowerCase();
  if (!/^([0-9a-f]{2})*$/.test(clean)) throw new Error("not a hex string");
  return Uint8Array.from(clean.match(/../g) ?? [], (h) => parseInt(h, 16));
}
