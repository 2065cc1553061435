// What the phone and the gateway say to each other (docs/design.md §5, §6), as
// plain data and pure functions: no DOM, no MQTT. Copy this file as is.

/** Consent purposes. Anything absent counts as "no". */
export const PURPOSES = ["proximity", "product_info", "offers", "thanks", "feedback"] as const;
export type Purpose = (typeof PURPOSES)[number];

/** Words for each purpose, as the consent screen shows them. */
export const PURPOSE_LABELS: Record<Purpose, { label: string; hint: string }> = {
  proximity: {
    label: "Recognise me in the store",
    hint: "Without this nothing else happens: the store does not notice your phone.",
  },
  product_info: {
    label: "Product information",
    hint: "Details and comparisons for the shelf you are looking at.",
  },
  offers: { label: "Offers", hint: "Discounts on things you are interested in." },
  thanks: { label: "Thank-you messages", hint: "A short note after you buy something." },
  feedback: { label: "Feedback questions", hint: "An occasional one-tap question." },
};

/** The customer's topics. `recipient` is the per-person pseudonym. */
export interface Topics {
  nudges: string;
  consent: string;
  feedback: string;
  /** The gateway's plain receipts topic. */
  receipts: string;
  /** Subscription filter covering `receipts` and every level below it. */
  receiptsFilter: string;
  /** Our own MQTT v5 response topic, inside our receipts topic (the only
   * place the gateway will answer). */
  responseTopic: string;
}

export function topicsFor(prefix: string, store: string, recipient: string, session: string): Topics {
  // Wildcards would widen a subscription to other people's topics.
  if (!prefix || /[+#]/.test(prefix)) throw new Error(`bad prefix: ${prefix}`);
  for (const [name, value] of [["store", store], ["recipient", recipient], ["session", session]]) {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(value)) throw new Error(`bad ${name}: ${value}`);
  }
  const base = `${prefix}/${store}`;
  const receipts = `${base}/receipts/${recipient}`;
  return {
    nudges: `${base}/nudges/${recipient}`,
    consent: `${base}/consent/${recipient}`,
    feedback: `${base}/feedback/${recipient}`,
    receipts,
    receiptsFilter: `${receipts}/#`, // "a/#" also matches "a" itself
    responseTopic: `${receipts}/${session}`,
  };
}

// ---------------------------------------------------------------------------
// Nudges
// ---------------------------------------------------------------------------

export type NudgeKind = "info" | "compare" | "thanks" | "feedback" | "offer";

/** One row of a comparison. Fields the gateway may add later are kept. */
export interface CompareItem {
  name?: string;
  price?: number | string;
  rating?: number | string;
  compatible_with?: string[] | string;
  [more: string]: unknown;
}

export interface Nudge {
  id: string;
  kind: NudgeKind;
  title: string;
  body: string;
  items?: CompareItem[];
  zone: string;
  created_at: string;
  expires_at: string;
  why: { rule: string; preference: string | null; zone: string; text: string };
  stop: { purpose: string; text: string };
}

const KINDS: readonly string[] = ["info", "compare", "thanks", "feedback", "offer"];

/** Parses a nudge payload; `null` for anything that is not one (the app
 * ignores it rather than showing half a message). */
export function parseNudge(text: string): Nudge | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof v !== "object" || v === null) return null;
  const n = v as Record<string, unknown>;
  const str = (x: unknown): x is string => typeof x === "string";
  const why = n.why as Record<string, unknown> | undefined;
  const stop = n.stop as Record<string, unknown> | undefined;
  if (
    !str(n.id) || !str(n.kind) || !KINDS.includes(n.kind) || !str(n.title) || !str(n.body) ||
    !str(n.expires_at) || Number.isNaN(Date.parse(n.expires_at)) ||
    typeof why !== "object" || why === null || !str(why.text) ||
    typeof stop !== "object" || stop === null || !str(stop.text)
  ) {
    return null;
  }
  if (n.items !== undefined && !Array.isArray(n.items)) return null;
  return v as Nudge;
}

/** The nudges on screen: drops duplicates by `id` (QoS 1 may deliver twice,
 * and a reconnect may replay), refuses and removes expired ones. */
export class Inbox {
  // Every id ever seen, so a redelivery never shows again. The gateway caps
  // nudges at a few a day, so this stays small for the life of a page.
  private seen = new Set<string>();
  private shown = new Map<string, Nudge>();

  /** What happened to an arriving nudge. */
  add(nudge: Nudge, nowMs: number): "new" | "duplicate" | "expired" {
    if (this.seen.has(nudge.id)) return "duplicate";
    this.seen.add(nudge.id);
    if (Date.parse(nudge.expires_at) <= nowMs) return "expired";
    this.shown.set(nudge.id, nudge);
    return "new";
  }

  /** Removes what has expired by `nowMs`; returns the removed ids. */
  expire(nowMs: number): string[] {
    const gone = [...this.shown.values()].filter((n) => Date.parse(n.expires_at) <= nowMs).map((n) => n.id);
    for (const id of gone) this.shown.delete(id);
    return gone;
  }

  /** Removes everything (after "forget me"). */
  clear(): void {
    this.shown.clear();
  }

  get size(): number {
    return this.shown.size;
  }
}

// ---------------------------------------------------------------------------
// Consent changes and receipts
// ---------------------------------------------------------------------------

/** A fresh id for a change: "c-" and 12 random hex digits (the gateway
 * accepts letters, digits, '-', '_' and '.', up to 64). */
export function newChangeId(): string {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(6));
  return "c-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export interface ConsentChange {
  id: string;
  consent: Partial<Record<Purpose, boolean>>;
  at: string;
}

export function consentChange(id: string, purpose: Purpose, value: boolean, at = new Date()): ConsentChange {
  return { id, consent: { [purpose]: value }, at: at.toISOString() };
}

/** "Stop all and forget me": erasure of the whole person. */
export function forgetRequest(id: string): { id: string; forget: true } {
  return { id, forget: true };
}

export interface Receipt {
  id: string;
  /** "saved" or "forgotten" */
  status: string;
}

export function parseReceipt(text: string): Receipt | null {
  try {
    const v = JSON.parse(text) as Record<string, unknown>;
    if (typeof v?.id === "string" && typeof v.status === "string") return { id: v.id, status: v.status };
  } catch {
    // not JSON: not a receipt
  }
  return null;
}

// ---------------------------------------------------------------------------
// Feedback
// ---------------------------------------------------------------------------

export interface FeedbackAnswer {
  nudge_id: string;
  answer: "yes" | "no";
  comment?: string;
}

export function feedbackAnswer(nudgeId: string, answer: "yes" | "no", comment: string): FeedbackAnswer {
  const trimmed = comment.trim().slice(0, 1000); // the gateway takes up to 1000 characters
  return trimmed ? { nudge_id: nudgeId, answer, comment: trimmed } : { nudge_id: nudgeId, answer };
}
