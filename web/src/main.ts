// The page: reads its settings (src/settings.ts), connects as one customer and
// keeps the screen in step. Everything from the network goes into the DOM
// with textContent, never innerHTML: a nudge cannot inject markup.

import { Customer } from "./customer";
import type { Status } from "./customer";
import { Inbox, PURPOSE_LABELS, PURPOSES } from "./protocol";
import type { CompareItem, Nudge, Purpose } from "./protocol";
import { fromHex, intervalEndMs, intervalOf, rotatingId, toHex } from "./rotating";
import { FIELDS, SECRET_FIELDS, STORAGE_KEY, parseStored, queryWithout, resolveSettings } from "./settings";

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing`);
  return el as T;
};

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  text?: string,
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---------------------------------------------------------------------------
// Settings: ?broker=ws://…&prefix=retail&store=…&recipient=…&username=…
//           &consent=proximity,product_info in the URL; the password and the
//           app key only through the form (kept in this tab's sessionStorage)
// ---------------------------------------------------------------------------

const query = new URLSearchParams(location.search);
const { settings, ignored } = resolveSettings(query, parseStored(sessionStorage.getItem(STORAGE_KEY)), {
  broker: `ws://${location.hostname || "127.0.0.1"}:9001/mqtt`,
  prefix: "retail",
});
if (ignored.length > 0) {
  // Out of the address bar (and this tab's history entry) at once.
  history.replaceState(null, "", `${location.pathname}${queryWithout(query, SECRET_FIELDS)}`);
  $("settings-note").textContent = `Not used: ${ignored.join(" and ")} in the address. Enter them below instead.`;
}
const form = $<HTMLFormElement>("settings");
for (const [name, value] of Object.entries(settings)) {
  const input = form.elements.namedItem(name);
  if (input instanceof HTMLInputElement) input.value = value;
}
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const values: Record<string, string> = {};
  for (const field of FIELDS) {
    const input = form.elements.namedItem(field);
    if (input instanceof HTMLInputElement) values[field] = input.value;
  }
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify(values));
  // Reload with what the form now holds; the query keeps only what the
  // form does not ask for (consent).
  location.replace(`${location.pathname}${queryWithout(query, FIELDS)}`);
});

// ---------------------------------------------------------------------------
// Connection status
// ---------------------------------------------------------------------------

const STATUS_TEXT: Record<Status | "forgotten", string> = {
  connecting: "Connecting…",
  connected: "Connected",
  offline: "Offline: messages wait until you are back",
  refused: "Could not connect",
  forgotten: "Disconnected: the store has forgotten you",
};

function showStatus(status: Status | "forgotten", detail?: string): void {
  const node = $("status");
  node.dataset.state = status;
  node.textContent = detail ? `${STATUS_TEXT[status]}: ${detail}` : STATUS_TEXT[status];
}

// ---------------------------------------------------------------------------
// Nudges
// ---------------------------------------------------------------------------

const inbox = new Inbox();

function domId(nudgeId: string): string {
  return `nudge-${nudgeId.replace(/[^A-Za-z0-9_-]/g, "_")}`;
}

function showNudge(nudge: Nudge): void {
  if (inbox.add(nudge, Date.now()) !== "new") return; // duplicate or already expired
  const id = domId(nudge.id);
  const card = el("article", { id, class: "nudge", "data-kind": nudge.kind, "aria-labelledby": `${id}-title` });
  card.append(el("h3", { id: `${id}-title` }, nudge.title), el("p", { class: "body" }, nudge.body));
  if (nudge.items?.length) card.append(compareTable(nudge.items));
  if (nudge.kind === "feedback") card.append(feedbackForm(nudge, id));

  // The disclosure every nudge carries: why it came, and how to stop it.
  const why = el("details", { class: "why" });
  why.append(
    el("summary", {}, "Why am I seeing this?"),
    el("p", { class: "why-text" }, nudge.why.text),
    el("p", { class: "stop-text" }, nudge.stop.text),
  );
  card.append(why);
  const until = new Date(nudge.expires_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  card.append(el("p", { class: "meta" }, `Until ${until}`));

  $("nudges").prepend(card);
  $("nudges-empty").hidden = true;
}

function compareTable(items: CompareItem[]): HTMLTableElement {
  const table = el("table", { class: "compare" });
  table.append(el("caption", {}, "Side by side"));
  const head = el("tr");
  for (const h of ["Model", "Price", "Rating", "Works with"]) head.append(el("th", { scope: "col" }, h));
  table.appendChild(el("thead")).append(head);
  const body = table.appendChild(el("tbody"));
  const text = (v: unknown): string => (Array.isArray(v) ? v.join(", ") : v == null ? "–" : String(v));
  for (const item of items) {
    const row = body.appendChild(el("tr"));
    row.append(
      el("th", { scope: "row" }, text(item.name)),
      el("td", {}, text(item.price)),
      el("td", {}, text(item.rating)),
      el("td", {}, text(item.compatible_with)),
    );
  }
  return table;
}

function feedbackForm(nudge: Nudge, id: string): HTMLElement {
  const group = el("div", { class: "feedback", role: "group", "aria-label": "Your answer" });
  const comment = el("input", { id: `${id}-comment`, type: "text", maxlength: "1000" });
  const state = el("span", { class: "state", role: "status", "aria-live": "polite" });
  const buttons = (["yes", "no"] as const).map((answer) => {
    const button = el("button", { type: "button", "data-answer": answer }, answer === "yes" ? "Yes" : "No");
    button.addEventListener("click", async () => {
      buttons.forEach((b) => (b.disabled = true));
      state.textContent = "Sending…";
      try {
        await customer?.answer(nudge.id, answer, comment.value);
        state.textContent = "Thank you";
      } catch {
        state.textContent = "Not sent: try again";
        buttons.forEach((b) => (b.disabled = false));
      }
    });
    return button;
  });
  group.append(el("label", { for: comment.id }, "Comment (optional)"), comment, ...buttons, state);
  return group;
}

/** Expired nudges leave the screen on their own. */
function removeExpired(): void {
  for (const id of inbox.expire(Date.now())) document.getElementById(domId(id))?.remove();
  $("nudges-empty").hidden = inbox.size > 0;
}

// ---------------------------------------------------------------------------
// Consent switches: "saving…" until the receipt, then "saved"
// ---------------------------------------------------------------------------

// What this page last had confirmed, per recipient. A real app knows its
// customer's choices from enrollment; here they come from ?consent= or
// from the last receipts this browser saw.
const storageKey = `consent:${settings.recipient}`;
function initialConsent(): Set<string> {
  const given = query.get("consent");
  if (given !== null) return new Set(given.split(",").filter(Boolean));
  return new Set(JSON.parse(localStorage.getItem(storageKey) ?? "[]") as string[]);
}
function rememberConsent(): void {
  const on = PURPOSES.filter((p) => $<HTMLInputElement>(`consent-${p}`).checked);
  localStorage.setItem(storageKey, JSON.stringify(on));
}

function buildSwitches(): void {
  const on = initialConsent();
  for (const purpose of PURPOSES) {
    const { label, hint } = PURPOSE_LABELS[purpose];
    const id = `consent-${purpose}`;
    const row = el("div", { class: "switch" });
    const input = el("input", {
      id,
      type: "checkbox",
      role: "switch",
      "aria-describedby": `${id}-hint ${id}-state`,
    });
    input.checked = on.has(purpose);
    row.append(
      input,
      el("label", { for: id }, label),
      el("span", { id: `${id}-state`, class: "state", role: "status", "aria-live": "polite" }),
      el("p", { id: `${id}-hint`, class: "hint" }, hint),
    );
    input.addEventListener("change", () => void changeConsent(purpose, input));
    $("consent").append(row);
  }
}

async function changeConsent(purpose: Purpose, input: HTMLInputElement): Promise<void> {
  const state = $(`consent-${purpose}-state`);
  const wanted = input.checked;
  input.disabled = true; // one change at a time per switch
  state.dataset.state = "saving";
  state.textContent = "saving…";
  try {
    if (!customer) throw new Error("not connected");
    await customer.changeConsent(purpose, wanted);
    state.dataset.state = "saved";
    state.textContent = "saved";
    rememberConsent();
  } catch {
    input.checked = !wanted; // the store did not confirm: show what it has
    state.dataset.state = "failed";
    state.textContent = "not saved, try again";
  } finally {
    input.disabled = customer === null; // stays off after "forget me"
  }
}

async function forgetMe(): Promise<void> {
  const state = $("forget-state");
  if (!customer) return;
  if (!confirm("Erase everything the store knows about you? This cannot be undone.")) return;
  $<HTMLButtonElement>("forget").disabled = true;
  state.dataset.state = "saving";
  state.textContent = "Erasing…";
  try {
    const receipt = await customer.forget();
    state.dataset.state = receipt.status;
    state.textContent = "Done: the store has erased everything about you.";
    // Nothing is left to change: every switch off and disabled.
    for (const p of PURPOSES) {
      const input = $<HTMLInputElement>(`consent-${p}`);
      input.checked = false;
      input.disabled = true;
      $(`consent-${p}-state`).textContent = "";
    }
    localStorage.removeItem(storageKey);
    inbox.clear();
    $("nudges").replaceChildren();
    $("nudges-empty").hidden = false;
    customer.end();
    customer = null;
    showStatus("forgotten");
  } catch {
    state.dataset.state = "failed";
    state.textContent = "Not confirmed: try again";
    $<HTMLButtonElement>("forget").disabled = false;
  }
}

// ---------------------------------------------------------------------------
// The rotating identifier (what the app would advertise over Bluetooth)
// ---------------------------------------------------------------------------

async function showRotatingId(): Promise<void> {
  if (!/^[0-9a-fA-F]{32}$/.test(settings.key)) {
    $("rotating-id").textContent = "no app key given";
    return;
  }
  const interval = intervalOf(Date.now());
  $("rotating-id").textContent = toHex(await rotatingId(fromHex(settings.key), interval));
  const end = new Date(intervalEndMs(interval));
  $("rotating-until").textContent = `(until ${end.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })})`;
  setTimeout(() => void showRotatingId(), Math.max(1_000, end.getTime() - Date.now()));
}

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

/** Per-tab client id (kept across reloads, so the persistent session
 * resumes); it also names our response topic. */
function clientId(): string {
  let id = sessionStorage.getItem("clientId");
  if (!id) {
    id = `web-${toHex(crypto.getRandomValues(new Uint8Array(8)))}`;
    sessionStorage.setItem("clientId", id);
  }
  return id;
}

let customer: Customer | null = null;

buildSwitches();
void showRotatingId();
setInterval(removeExpired, 1_000);
$("forget").addEventListener("click", () => void forgetMe());

if (settings.store && settings.recipient) {
  customer = new Customer(
    { ...settings, clientId: clientId() },
    { status: showStatus, nudge: showNudge },
  );
  customer.connect();
} else {
  showStatus("offline", "enter the connection settings below");
  form.closest("details")?.setAttribute("open", "");
}
