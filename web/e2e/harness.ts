// A small harness for the browser test: child processes that are always
// killed, free ports, bounded waits, a static file server.

import { spawn, spawnSync } from "node:child_process";
import type { ChildProcess, SpawnOptions } from "node:child_process";
import { createWriteStream, existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { Server } from "node:http";
import { createServer as createTcpServer, connect } from "node:net";
import { createSocket } from "node:dgram";
import { extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

/** The repo root (web/ is directly inside it). */
export const REPO = fileURLToPath(new URL("../..", import.meta.url));
/** Where cargo put the binaries: $CARGO_TARGET_DIR or <repo>/target. */
export const TARGET = resolve(process.env.CARGO_TARGET_DIR ?? join(REPO, "target"), "debug");

export function binary(relative: string): string {
  const path = join(TARGET, relative);
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: run scripts/web-test (it builds the Rust binaries first)`);
  }
  return path;
}

export class Proc {
  output = "";
  exited: number | null = null;
  constructor(readonly name: string, readonly child: ChildProcess, logPath: string) {
    const log = createWriteStream(logPath);
    const take = (chunk: Buffer) => {
      this.output += chunk.toString();
      log.write(chunk);
    };
    child.stdout?.on("data", take);
    child.stderr?.on("data", take);
    child.on("exit", (code, signal) => {
      this.exited = code ?? (signal ? 128 : -1);
      log.end();
    });
  }

  tail(lines = 30): string {
    return `--- ${this.name} (last ${lines} lines) ---\n` + this.output.split("\n").slice(-lines).join("\n");
  }
}

/** Every process started here; killed by `stopAll`, or at exit at the latest. */
const running: Proc[] = [];
process.on("exit", () => {
  for (const p of running) if (p.exited === null) p.child.kill("SIGKILL");
});

export function start(name: string, cmd: string, args: string[], logDir: string, opts: SpawnOptions = {}): Proc {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...opts });
  const proc = new Proc(name, child, join(logDir, `${name}.log`));
  running.push(proc);
  return proc;
}

/** SIGTERM, then SIGKILL after 3 s, for every process still running. */
export async function stopAll(): Promise<void> {
  await Promise.all(
    running.splice(0).map(async (p) => {
      if (p.exited !== null) return;
      const gone = new Promise<void>((r) => p.child.once("exit", () => r()));
      p.child.kill("SIGTERM");
      const timer = setTimeout(() => p.child.kill("SIGKILL"), 3_000);
      await gone;
      clearTimeout(timer);
    }),
  );
}

export function runToEnd(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 60_000, env: { ...process.env, ...env } });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status}): ${r.stderr}${r.error ?? ""}`);
  return r.stdout;
}

/** Polls `check` every 100 ms until it returns a truthy value, at most `ms`. */
export async function waitFor<T>(what: string, ms: number, check: () => T | Promise<T>): Promise<NonNullable<T>> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function freeTcpPort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createTcpServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolvePort(port));
    });
  });
}

export function freeUdpPort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const socket = createSocket("udp4");
    socket.once("error", reject);
    socket.bind(0, "127.0.0.1", () => {
      const { port } = socket.address();
      socket.close(() => resolvePort(port));
    });
  });
}

export function acceptsTcp(port: number): Promise<boolean> {
  return new Promise((r) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      r(true);
    });
    s.once("error", () => r(false));
  });
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json",
};

/** Serves `root` on 127.0.0.1 (a free port); GET only, no directory listing. */
export function serveStatic(root: string): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname));
    const file = join(root, path === sep ? "index.html" : path);
    if (req.method !== "GET" || !file.startsWith(root) || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
    res.end(readFileSync(file));
  });
  return new Promise((r) =>
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      r({ server, url: `http://127.0.0.1:${port}/` });
    }),
  );
}
