// One customer's MQTT v5 connection to the store, over WebSockets. No DOM:
// the page (main.ts) gives it callbacks and calls its methods.
//
// What it does on the wire (docs/design.md §5, §6):
//   subscribe  <p>/<s>/nudges/<recipient>          nudges, QoS 1
//   subscribe  <p>/<s>/receipts/<recipient>/#      receipts, on the plain
//              topic and on our own response topic below it
//   publish    <p>/<s>/consent/<recipient>         consent changes, forget
//   publish    <p>/<s>/feedback/<recipient>        feedback answers
// The broker's ACL lets a customer's credentials touch only these.

import mqtt from "mqtt";
import type { IClientPublishOptions, MqttClient } from "mqtt";

import {
  consentChange,
  feedbackAnswer,
  forgetRequest,
  newChangeId,
  parseNudge,
  parseReceipt,
  topicsFor,
} from "./protocol";
import type { Nudge, Purpose, Receipt, Topics } from "./protocol";

export interface Settings {
  /** WebSocket URL of the broker (or of the bridge in front of it). */
  broker: string;
  prefix: string;
  store: string;
  recipient: string;
  username?: string;
  password?: string;
  /** MQTT client id; also names our response topic. Keep it per device. */
  clientId: string;
}

export type Status = "connecting" | "connected" | "offline" | "refused";

export interface Events {
  status(status: Status, detail?: string): void;
  nudge(nudge: Nudge): void;
}

/** How long the page waits for a receipt before saying "not saved". */
export const RECEIPT_TIMEOUT_MS = 15_000;

export class Customer {
  readonly topics: Topics;
  private client: MqttClient | null = null;
  /** Changes sent and not yet confirmed, by change id. */
  private pending = new Map<string, (receipt: Receipt) => void>();

  constructor(private settings: Settings, private events: Events) {
    this.topics = topicsFor(settings.prefix, settings.store, settings.recipient, settings.clientId);
  }

  connect(): void {
    const s = this.settings;
    this.events.status("connecting");
    const client = mqtt.connect(s.broker, {
      protocolVersion: 5,
      clientId: s.clientId,
      username: s.username || undefined,
      password: s.password || undefined,
      // A persistent session for five minutes: QoS 1 nudges sent while the
      // phone is briefly offline are delivered when it comes back.
      clean: false,
      properties: { sessionExpiryInterval: 300 },
      reconnectPeriod: 2_000,
      connectTimeout: 10_000,
    });
    this.client = client;

    client.on("connect", async () => {
      try {
        const granted = await client.subscribeAsync(
          [this.topics.nudges, this.topics.receiptsFilter],
          { qos: 1 },
        );
        // MQTT v5 reason codes ≥ 0x80 mean "refused" (e.g. by the ACL).
        const refused = granted.filter((g) => g.qos >= 0x80);
        if (refused.length > 0) {
          this.events.status("refused", `not allowed to read ${refused.map((g) => g.topic).join(", ")}`);
        } else {
          this.events.status("connected");
        }
      } catch (e) {
        this.events.status("refused", String(e));
      }
    });
    client.on("offline", () => this.events.status("offline"));
    client.on("reconnect", () => this.events.status("connecting"));
    client.on("error", (e) => this.events.status("refused", e.message));
    client.on("message", (topic, payload) => this.onMessage(topic, payload));
  }

  private onMessage(topic: string, payload: Uint8Array): void {
    const text = new TextDecoder().decode(payload);
    if (topic === this.topics.nudges) {
      const nudge = parseNudge(text);
      if (nudge) this.events.nudge(nudge);
      return;
    }
    // Receipts arrive twice when we ask for a response topic: once on the
    // plain receipts topic, once on ours. The first one settles the change.
    const receipt = parseReceipt(text);
    const settle = receipt && this.pending.get(receipt.id);
    if (receipt && settle) {
      this.pending.delete(receipt.id);
      settle(receipt);
    }
  }

  /** Changes one purpose. Resolves with the gateway's receipt, which it
   * sends only once the change is on disk; rejects after a timeout. */
  changeConsent(purpose: Purpose, value: boolean): Promise<Receipt> {
    const id = newChangeId();
    return this.request(id, consentChange(id, purpose, value));
  }

  /** "Stop all and forget me": the gateway erases the whole person. */
  forget(): Promise<Receipt> {
    const id = newChangeId();
    return this.request(id, forgetRequest(id));
  }

  /** Answers a feedback nudge. Resolves once the broker has it (PUBACK). */
  async answer(nudgeId: string, answer: "yes" | "no", comment: string): Promise<void> {
    await this.publish(this.topics.feedback, feedbackAnswer(nudgeId, answer, comment), {});
  }

  end(): void {
    this.client?.end(true);
    this.client = null;
  }

  private request(id: string, body: object): Promise<Receipt> {
    return new Promise<Receipt>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error("no receipt in time"));
      }, RECEIPT_TIMEOUT_MS);
      this.pending.set(id, (receipt) => {
        clearTimeout(timer);
        resolve(receipt);
      });
      // MQTT v5 request/response: the gateway answers on our response topic
      // too, with our correlation data (here: the change id).
      this.publish(this.topics.consent, body, {
        responseTopic: this.topics.responseTopic,
        // MQTT.js types this as a Node Buffer; in the browser a Uint8Array
        // is what its bundled Buffer shim accepts.
        correlationData: new TextEncoder().encode(id) as unknown as Buffer,
      }).catch((e: unknown) => {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(e instanceof Error ? e : new Error(String(e)));
      });
    });
  }

  private async publish(
    topic: string,
    body: object,
    properties: NonNullable<IClientPublishOptions["properties"]>,
  ): Promise<void> {
    if (!this.client) throw new Error("not connected");
    await this.client.publishAsync(topic, JSON.stringify(body), {
      qos: 1,
      properties: { payloadFormatIndicator: true, contentType: "application/json", ...properties },
    });
  }
}
