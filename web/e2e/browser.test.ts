// The customer's side end to end, in a real browser: Debian's Chromium
// (driven by playwright-core) loads the built page, which speaks MQTT v5
// over WebSockets through the gateway's wsbridge to a private Mosquitto,
// where the real `gateway run` is fed by the real `firmware-sim`.
//
//   chromium ──ws(mqtt)──> wsbridge ──tcp──> mosquitto <──tcp── gateway <──udp── firmware-sim
//                                               ^
//                        this test's own MQTT client (TCP)
//
// Screenshots of each state go to web/test-results/.

import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import type { Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";

import mqtt from "mqtt";
import type { MqttClient } from "mqtt";
import { chromium } from "playwright-core";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { fromHex, intervalOf, rotatingId, toHex } from "../src/rotating";

import {
  REPO,
  acceptsTcp,
  binary,
  freeTcpPort,
  freeUdpPort,
  runToEnd,
  serveStatic,
  start,
  stopAll,
  waitFor,
} from "./harness";
import type { Proc } from "./harness";

const PREFIX = "retail";
const STORE = "store-web";
const RESULTS = join(REPO, "web", "test-results");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
// Without the background-networking flags Chromium keeps trying to reach
// Google's hosts, which this machine's closed network refuses.
const CHROMIUM_FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const SITE_RULES = `
[[zones]]
id = "entrance"
scanners = ["entrance"]

[[zones]]
id = "laptops"
scanners = ["laptops"]

[[zones]]
id = "headphones"
scanners = ["headphones"]

[[rules]]
id = "laptop-compare"
zone = "laptops"
dwell_s = 20
interest = "laptops"
kind = "compare"
title = "Comparing laptops?"
body = "Side-by-side specs, reviews and prices for the models on this table."

[caps]
per_visit = 5
per_day = 5
per_week = 10
min_gap_s = 0

# The twin runs faster than real time, ahead of the wall clock.
[presence]
max_future_skew_ms = 86400000
`;

interface Person {
  person: string;
  recipient: string;
  identities: { kind: string; key?: string }[];
  consent: Record<string, boolean>;
}

let work: string;
let broker: Proc;
let gateway: Proc;
let mqttPort: number;
let udpPort: number;
let bridgeUrl: string;
let site: { server: Server; url: string };
let browser: Browser;
let observer: MqttClient;
/** Everything the observer saw: topic, payload text, correlation data. */
const seen: { topic: string; text: string; correlation?: string; at: number }[] = [];
let people: Person[];
let pageA: Page; // r-1001: laptops interest, product_info on
let pageB: Page; // r-1002: no product_info
let failed = false;

const topic = (rest: string) => `${PREFIX}/${STORE}/${rest}`;
const shot = (page: Page, name: string) => page.screenshot({ path: join(RESULTS, `${name}.png`), fullPage: true });

/** Only what is not secret: the app key goes in through the form. */
function pageUrl(p: Person): string {
  const consent = Object.entries(p.consent).filter(([, v]) => v).map(([k]) => k).join(",");
  const q = new URLSearchParams({ broker: bridgeUrl, prefix: PREFIX, store: STORE, recipient: p.recipient, consent });
  return `${site.url}?${q}`;
}

async function openCustomer(p: Person, name: string): Promise<Page> {
  const key = p.identities.find((i) => i.kind === "app")?.key ?? "";
  const context = await browser.newContext({ viewport: { width: 480, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${name}] page error: ${e.message}`));
  // A key in the address is not used, and leaves the address bar at once.
  await page.goto(`${pageUrl(p)}&key=${key}`);
  await expect.poll(() => page.locator("#settings-note").textContent()).toContain("Not used: key");
  expect(page.url()).not.toContain(key);
  expect(await page.locator("#rotating-id").textContent()).toBe("no app key given");
  // The form is where it goes; it stays out of every URL.
  await page.getByText("Connection settings").click();
  await page.getByLabel("App key (32 hex digits)").fill(key);
  await page.getByRole("button", { name: "Connect" }).click();
  await page.waitForURL((url) => !url.search.includes("recipient="));
  expect(page.url()).not.toContain(key);
  await expect.poll(() => page.locator("#status").textContent(), { timeout: 15_000 }).toBe("Connected");
  await expect.poll(() => page.locator("#rotating-id").textContent()).not.toBe("no app key given");
  return page;
}

/** Publishes a nudge as the gateway would (the test stands in for it). */
async function publishNudge(recipient: string, nudge: object): Promise<void> {
  await observer.publishAsync(topic(`nudges/${recipient}`), JSON.stringify(nudge), { qos: 1 });
}

function fakeNudge(id: string, kind: string, expiresInMs: number, extra: object = {}): object {
  const now = Date.now();
  return {
    id,
    kind,
    title: `Test ${kind} ${id}`,
    body: "Published by the browser test.",
    zone: "laptops",
    created_at: new Date(now).toISOString(),
    expires_at: new Date(now + expiresInMs).toISOString(),
    why: { rule: "test", preference: null, zone: "laptops", text: `Why text of ${id}.` },
    stop: { purpose: "product_info", text: "To stop these, turn off product information." },
    ...extra,
  };
}

beforeAll(async () => {
  failed = true; // until everything has started: keep the logs if not
  mkdirSync(RESULTS, { recursive: true });
  work = mkdtempSync(join(tmpdir(), "web-e2e-"));

  // 1. A private Mosquitto on a free port.
  mqttPort = await freeTcpPort();
  writeFileSync(
    join(work, "mosquitto.conf"),
    `listener ${mqttPort} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\nlog_dest stderr\n`,
  );
  broker = start("mosquitto", "/usr/sbin/mosquitto", ["-c", join(work, "mosquitto.conf")], work);
  await waitFor("mosquitto to listen", 10_000, () => acceptsTcp(mqttPort));

  // 2. The WebSocket bridge in front of it (it prints the port it got).
  const bridge = start(
    "wsbridge",
    binary("examples/wsbridge"),
    ["--listen", "127.0.0.1:0", "--target", `127.0.0.1:${mqttPort}`],
    work,
  );
  const addr = await waitFor("the bridge to listen", 10_000, () =>
    bridge.output.match(/wsbridge listening on (\S+)/)?.[1],
  );
  bridgeUrl = `ws://${addr}/mqtt`;

  // 3. The built page.
  site = await serveStatic(join(REPO, "web", "dist"));

  // 4. The gateway: site file, the simulator's people, `gateway run`.
  udpPort = await freeUdpPort();
  const config = join(work, "site.toml");
  writeFileSync(
    config,
    `[store]\nid = "${STORE}"\ntimezone = "Europe/Berlin"\n\n` +
      `[mqtt]\nurl = "mqtt://127.0.0.1:${mqttPort}"\nprefix = "${PREFIX}"\nkeep_alive_s = 5\n\n` +
      `[storage]\npath = "${join(work, "db")}"\n\n` +
      `[[sources]]\nkind = "udp"\nbind = "127.0.0.1:${udpPort}"\n\n` +
      `[admin]\nlisten = ""\n` +
      SITE_RULES,
  );
  const peopleFile = join(work, "people.jsonl");
  runToEnd(binary("firmware-sim"), ["people", "--seed", "7", "--out", peopleFile]);
  people = readFileSync(peopleFile, "utf8").trim().split("\n").map((l) => JSON.parse(l) as Person);
  runToEnd(binary("gateway"), ["--config", config, "people", "import", peopleFile], { GATEWAY_LOG: "warn" });
  gateway = start("gateway", binary("gateway"), ["--config", config, "run"], work, {
    env: { ...process.env, GATEWAY_LOG: "info,rumqttc=warn" },
  });
  await waitFor("the gateway to run", 20_000, () => gateway.output.includes("gateway running"));

  // 5. The test's own MQTT client sees everything under the store.
  observer = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, { protocolVersion: 5, clientId: "web-e2e-observer" });
  observer.on("message", (t, payload, packet) => {
    const correlation = packet.properties?.correlationData;
    seen.push({ topic: t, text: payload.toString(), correlation: correlation?.toString(), at: Date.now() });
  });
  await observer.subscribeAsync(`${PREFIX}/${STORE}/#`, { qos: 1 });

  // 6. Chromium, headless, from Debian.
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS });
  failed = false;
}, 90_000);

afterAll(async () => {
  await browser?.close().catch(() => {});
  await observer?.endAsync(true).catch(() => {});
  site?.server.close();
  site?.server.closeAllConnections();
  if (failed) {
    for (const p of [gateway, broker]) if (p) console.error(p.tail(40));
    console.error(`logs kept in ${work}`);
  }
  await stopAll();
  if (!failed && work) rmSync(work, { recursive: true, force: true });
}, 30_000);

describe("the reference phone client in Chromium", () => {
  const person = (recipient: string) => {
    const p = people.find((x) => x.recipient === recipient);
    if (!p) throw new Error(`no ${recipient} in the simulator's people`);
    return p;
  };

  it("connects two customers and shows each one's rotating identifier", async () => {
    try {
      pageA = await openCustomer(person("r-1001"), "r-1001");
      pageB = await openCustomer(person("r-1002"), "r-1002");
      // The page's identifier is the one the app would advertise now (the
      // browser's Web Crypto and Node's agree; the vectors pin both).
      for (const [page, who] of [[pageA, "r-1001"], [pageB, "r-1002"]] as const) {
        const key = person(who).identities.find((i) => i.kind === "app")?.key ?? "";
        const expected = toHex(await rotatingId(fromHex(key), intervalOf(Date.now())));
        await expect.poll(() => page.locator("#rotating-id").textContent()).toBe(expected);
      }
      // The switches start from the customer's consent.
      expect(await pageA.getByRole("switch", { name: "Product information" }).isChecked()).toBe(true);
      expect(await pageB.getByRole("switch", { name: "Product information" }).isChecked()).toBe(false);
      await shot(pageA, "01-connected");
    } catch (e) {
      failed = true;
      throw e;
    }
  });

  it("shows the gateway's nudge, with its why text, only to its recipient", async () => {
    try {
      // The simulated store: r-1001 lingers at the laptops (20× real time).
      const sim = start(
        "firmware-sim",
        binary("firmware-sim"),
        ["udp", "--target", `127.0.0.1:${udpPort}`, "--seed", "7", "--speed", "20", "--duration", "5m", "--start", "now"],
        work,
      );
      const card = pageA.locator("article.nudge", { hasText: "Comparing laptops?" });
      await card.waitFor({ timeout: 40_000 });
      await card.getByText("Why am I seeing this?").click();
      const why = card.locator(".why-text");
      await expect.poll(() => why.isVisible()).toBe(true);
      expect(await why.textContent()).toContain("interested in laptops");
      expect(await card.locator(".stop-text").textContent()).toContain("product_info");
      await shot(pageA, "02-nudge-with-why");

      // The simulation runs to its end (5 min at 20× = 15 s); r-1002, who
      // did not allow product information, gets nothing, and never r-1001's.
      await waitFor("the simulator to finish", 40_000, () => sim.exited !== null);
      expect(sim.exited).toBe(0);
      const sentToA = seen.filter((m) => m.topic === topic("nudges/r-1001")).length;
      expect(sentToA).toBeGreaterThan(0);
      expect(seen.filter((m) => m.topic === topic("nudges/r-1002"))).toHaveLength(0);
      expect(await pageB.locator("article.nudge").count()).toBe(0);
      await shot(pageB, "03-other-customer-sees-nothing");
    } catch (e) {
      failed = true;
      throw e;
    }
  });

  it("shows comparison items, drops duplicates and expired nudges, and never leaks them", async () => {
    try {
      const items = [
        { name: "Aero 14", price: 1099, rating: 4.6, compatible_with: ["usb-c dock", "pen"] },
        { name: "Brick 15", price: 899, rating: 4.1, compatible_with: "usb-c dock" },
      ];
      await publishNudge("r-1001", fakeNudge("t-compare", "compare", 600_000, { items }));
      await publishNudge("r-1001", fakeNudge("t-compare", "compare", 600_000, { items })); // duplicate
      await publishNudge("r-1001", fakeNudge("t-expired", "info", -1_000)); // already expired
      await publishNudge("r-1001", fakeNudge("t-short", "info", 4_000)); // expires while shown
      const card = pageA.locator("#nudge-t-compare");
      await card.waitFor({ timeout: 10_000 });
      await pageA.locator("#nudge-t-short").waitFor({ timeout: 10_000 });
      const rows = card.locator("table.compare tbody tr");
      expect(await rows.count()).toBe(2);
      expect(await rows.nth(0).textContent()).toContain("Aero 14");
      expect(await rows.nth(0).textContent()).toContain("usb-c dock, pen");
      expect(await rows.nth(1).textContent()).toContain("899");
      await shot(pageA, "04-compare-items");

      // The short-lived one leaves on its own; the duplicate and the expired
      // one never show.
      await pageA.locator("#nudge-t-short").waitFor({ state: "detached", timeout: 10_000 });
      expect(await pageA.locator("#nudge-t-compare").count()).toBe(1);
      expect(await pageA.locator("#nudge-t-expired").count()).toBe(0);
      expect(await pageB.locator("article.nudge").count()).toBe(0);
    } catch (e) {
      failed = true;
      throw e;
    }
  });

  it("answers a feedback nudge on the feedback topic", async () => {
    try {
      await publishNudge("r-1001", fakeNudge("t-feedback", "feedback", 600_000, { title: "Did you find what you needed?" }));
      const card = pageA.locator("#nudge-t-feedback");
      await card.waitFor({ timeout: 10_000 });
      await card.getByLabel("Comment (optional)").fill("found it quickly");
      await card.getByRole("button", { name: "Yes" }).click();
      await expect.poll(() => card.getByRole("status").textContent(), { timeout: 10_000 }).toBe("Thank you");
      const answer = await waitFor("the feedback answer", 10_000, () =>
        seen.find((m) => m.topic === topic("feedback/r-1001")),
      );
      expect(JSON.parse(answer.text)).toEqual({ nudge_id: "t-feedback", answer: "yes", comment: "found it quickly" });
      await shot(pageA, "05-feedback-answered");
    } catch (e) {
      failed = true;
      throw e;
    }
  });

  it("says 'saved' for a consent change only after the gateway's receipt", async () => {
    try {
      const sw = pageA.getByRole("switch", { name: "Product information" });
      const state = pageA.locator("#consent-product_info-state");
      // Freeze the gateway, so the receipt cannot come yet.
      gateway.child.kill("SIGSTOP");
      let resumed = false;
      try {
        await sw.click();
        const change = await waitFor("the consent change on the broker", 10_000, () =>
          seen.find((m) => m.topic === topic("consent/r-1001")),
        );
        const body = JSON.parse(change.text) as { id: string; consent: Record<string, boolean> };
        expect(body.consent).toEqual({ product_info: false });
        await new Promise((r) => setTimeout(r, 1_500));
        expect(await state.textContent()).toBe("saving…");
        expect(seen.some((m) => m.topic.startsWith(topic("receipts/r-1001")))).toBe(false);
        await shot(pageA, "06-consent-saving");

        gateway.child.kill("SIGCONT");
        resumed = true;
        await expect.poll(() => state.textContent(), { timeout: 15_000 }).toBe("saved");
        // The receipt came, on the plain topic and on the page's own
        // response topic with its correlation data.
        const receipts = seen.filter((m) => m.topic.startsWith(topic("receipts/r-1001")));
        expect(receipts.map((m) => JSON.parse(m.text))).toContainEqual({ id: body.id, status: "saved" });
        const response = receipts.find((m) => m.topic !== topic("receipts/r-1001"));
        expect(response?.topic).toMatch(new RegExp(`^${topic("receipts/r-1001")}/web-[0-9a-f]+$`));
        expect(response?.correlation).toBe(body.id);
        expect(await sw.isChecked()).toBe(false);
        await shot(pageA, "07-consent-saved");
      } finally {
        if (!resumed) gateway.child.kill("SIGCONT");
      }
    } catch (e) {
      failed = true;
      throw e;
    }
  });

  it("'Stop all and forget me' erases the person and says so after the receipt", async () => {
    try {
      pageA.once("dialog", (d) => void d.accept());
      await pageA.getByRole("button", { name: "Stop all and forget me" }).click();
      const state = pageA.locator("#forget-state");
      await expect.poll(() => state.getAttribute("data-state"), { timeout: 15_000 }).toBe("forgotten");
      const forget = seen.find((m) => m.topic === topic("consent/r-1001") && m.text.includes('"forget"'));
      expect(forget && JSON.parse(forget.text).forget).toBe(true);
      expect(await pageA.locator("article.nudge").count()).toBe(0);
      for (const name of ["Recognise me in the store", "Product information", "Feedback questions"]) {
        expect(await pageA.getByRole("switch", { name }).isChecked()).toBe(false);
        expect(await pageA.getByRole("switch", { name }).isDisabled()).toBe(true);
      }
      expect(await pageA.locator("#status").textContent()).toContain("forgotten");
      await shot(pageA, "08-forgotten");
    } catch (e) {
      failed = true;
      throw e;
    }
  });
});
