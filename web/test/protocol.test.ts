import { describe, expect, it } from "vitest";

import {
  Inbox,
  consentChange,
  feedbackAnswer,
  forgetRequest,
  newChangeId,
  parseNudge,
  parseReceipt,
  topicsFor,
} from "../src/protocol";
import type { Nudge } from "../src/protocol";

const nudge = (id: string, expiresAt: string): Nudge => ({
  id,
  kind: "compare",
  title: "Comparing laptops?",
  body: "Side by side.",
  items: [{ name: "A", price: 999, rating: 4.5, compatible_with: ["usb-c"] }],
  zone: "laptops",
  created_at: "2026-11-23T10:00:00.000Z",
  expires_at: expiresAt,
  why: { rule: "laptop-compare", preference: "laptops", zone: "laptops", text: "Because." },
  stop: { purpose: "product_info", text: "Turn it off." },
});

describe("topics", () => {
  it("are the customer's own, with the response topic inside the receipts topic", () => {
    const t = topicsFor("retail", "store-1", "r-1", "web-ab");
    expect(t.nudges).toBe("retail/store-1/nudges/r-1");
    expect(t.consent).toBe("retail/store-1/consent/r-1");
    expect(t.feedback).toBe("retail/store-1/feedback/r-1");
    expect(t.receiptsFilter).toBe("retail/store-1/receipts/r-1/#");
    expect(t.responseTopic).toBe("retail/store-1/receipts/r-1/web-ab");
  });

  it("refuse wildcards and separators that would widen them", () => {
    expect(() => topicsFor("retail", "s", "+", "x")).toThrow();
    expect(() => topicsFor("retail", "s", "r/1", "x")).toThrow();
    expect(() => topicsFor("retail/#", "s", "r", "x")).toThrow();
  });
});

describe("nudges", () => {
  it("parse the gateway's payload and refuse what is not one", () => {
    const n = nudge("n-1", "2026-11-23T10:15:00.000Z");
    expect(parseNudge(JSON.stringify(n))).toEqual(n);
    expect(parseNudge("not json")).toBeNull();
    expect(parseNudge(JSON.stringify({ ...n, kind: "spam" }))).toBeNull();
    expect(parseNudge(JSON.stringify({ ...n, why: undefined }))).toBeNull();
    expect(parseNudge(JSON.stringify({ ...n, expires_at: "soon" }))).toBeNull();
  });

  it("are shown once, never when expired, and leave when they expire", () => {
    const inbox = new Inbox();
    const now = Date.parse("2026-11-23T10:00:00Z");
    expect(inbox.add(nudge("n-1", "2026-11-23T10:15:00Z"), now)).toBe("new");
    expect(inbox.add(nudge("n-1", "2026-11-23T10:15:00Z"), now)).toBe("duplicate");
    expect(inbox.add(nudge("n-2", "2026-11-23T09:59:59Z"), now)).toBe("expired");
    expect(inbox.size).toBe(1);
    expect(inbox.expire(now + 60_000)).toEqual([]);
    expect(inbox.expire(Date.parse("2026-11-23T10:15:00Z"))).toEqual(["n-1"]);
    expect(inbox.size).toBe(0);
    // Expired and gone, it still does not come back on a redelivery.
    expect(inbox.add(nudge("n-1", "2026-11-23T11:00:00Z"), now)).toBe("duplicate");
  });
});

describe("consent changes, receipts and feedback", () => {
  it("name only the purpose that changes", () => {
    const at = new Date("2026-11-23T10:15:00Z");
    expect(consentChange("c-1", "offers", false, at)).toEqual({
      id: "c-1",
      consent: { offers: false },
      at: "2026-11-23T10:15:00.000Z",
    });
    expect(forgetRequest("c-2")).toEqual({ id: "c-2", forget: true });
  });

  it("have ids the gateway accepts, different each time", () => {
    const ids = new Set(Array.from({ length: 100 }, newChangeId));
    expect(ids.size).toBe(100);
    for (const id of ids) expect(id).toMatch(/^[A-Za-z0-9._-]{1,64}$/);
  });

  it("receipts carry id and status", () => {
    expect(parseReceipt('{"id": "c-1", "status": "saved"}')).toEqual({ id: "c-1", status: "saved" });
    expect(parseReceipt('{"id": 1}')).toBeNull();
    expect(parseReceipt("")).toBeNull();
  });

  it("feedback leaves out an empty comment", () => {
    expect(feedbackAnswer("n-1", "yes", "  ")).toEqual({ nudge_id: "n-1", answer: "yes" });
    expect(feedbackAnswer("n-1", "no", " slow ")).toEqual({ nudge_id: "n-1", answer: "no", comment: "slow" });
  });
});
