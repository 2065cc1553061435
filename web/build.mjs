// Builds the page into dist/: one bundled ES module plus the static files.
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";

const out = new URL("./dist/", import.meta.url);
await mkdir(out, { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  outfile: "dist/app.js",
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  sourcemap: true,
  minify: process.env.MINIFY === "1",
  logLevel: "warning",
});
for (const file of ["index.html", "style.css"]) await copyFile(file, new URL(file, out));
console.log("built web/dist");
