// The browser end-to-end test: one file, one worker, long but bounded waits.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["e2e/**/*.test.ts"],
    environment: "node",
    testTimeout: 90_000,
    hookTimeout: 120_000,
    fileParallelism: false,
    // Tests in the file share one store and run in order.
    sequence: { concurrent: false },
  },
});
