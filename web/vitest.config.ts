// Unit tests: pure code in Node (Web Crypto is globalThis.crypto in Node ≥ 20).
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: { include: ["test/**/*.test.ts"], environment: "node" },
});
