// The rotating identifier against the published Exposure Notification
// vectors the gateway's Rust code is tested with (vectors/ at the root).
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

import { deriveRpik, fromHex, intervalEndMs, intervalOf, rotatingId, toHex } from "../src/rotating";

// One copy of the vectors for every consumer, Rust and TypeScript alike;
// ROTATING_ID_VECTORS can point at another set.
const path = process.env.ROTATING_ID_VECTORS ?? new URL("../../vectors/rotating_id.json", import.meta.url);
const vectors = JSON.parse(readFileSync(path, "utf8")) as { key: string; start_interval: number; rpik: string; rpis: string[] };

describe("rotating identifier (docs/design.md §5)", () => {
  it("derives the RPIK with HKDF-SHA256", async () => {
    expect(toHex(await deriveRpik(fromHex(vectors.key)))).toBe(vectors.rpik);
  });

  it("has five vectors to check", () => {
    expect(vectors.rpis).toHaveLength(5);
  });

  vectors.rpis.forEach((expected, i) => {
    it(`matches RPI vector ${i} (interval ${vectors.start_interval + i})`, async () => {
      const rpi = await rotatingId(fromHex(vectors.key), vectors.start_interval + i);
      expect(toHex(rpi)).toBe(expected);
    });
  });

  it("counts 10-minute intervals of Unix time", () => {
    const start = vectors.start_interval * 600 * 1000;
    expect(intervalOf(start)).toBe(vectors.start_interval);
    expect(intervalOf(start + 599_999)).toBe(vectors.start_interval);
    expect(intervalOf(start + 600_000)).toBe(vectors.start_interval + 1);
    expect(intervalEndMs(vectors.start_interval)).toBe(start + 600_000);
  });

  it("refuses a key that is not 16 bytes, and bad hex", async () => {
    await expect(deriveRpik(fromHex("00"))).rejects.toThrow(/16 bytes/);
    expect(() => fromHex("xyz")).toThrow();
  });
});
