// Where the page's connection settings come from. The password and the app
// key never travel in a URL (it ends up in history, bookmarks, server and
// proxy logs, and the Referer of anything the page loads): they come from
// the settings form and stay in this tab's sessionStorage. Everything else
// may come from the query too, so a link can name the store and recipient.
// Pure.

export const PLAIN_FIELDS = ["broker", "prefix", "store", "recipient", "username"] as const;
export const SECRET_FIELDS = ["password", "key"] as const;
export const FIELDS = [...PLAIN_FIELDS, ...SECRET_FIELDS] as const;
export type Field = (typeof FIELDS)[number];
export type Settings = Record<Field, string>;

/** The sessionStorage key the form's values are kept under. */
export const STORAGE_KEY = "settings";

/** What the form stored; anything malformed counts as nothing stored. */
export function parseStored(text: string | null): Partial<Settings> {
  if (!text) return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return {};
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return {};
  const stored: Partial<Settings> = {};
  for (const field of FIELDS) {
    const v = (value as Record<string, unknown>)[field];
    if (typeof v === "string") stored[field] = v;
  }
  return stored;
}

/**
 * The settings in effect: a plain field from the query, else from storage,
 * else its default; a secret only from storage. `ignored` names the secrets
 * the query carried anyway (they are not used).
 */
export function resolveSettings(
  query: URLSearchParams,
  stored: Partial<Settings>,
  defaults: Partial<Settings> = {},
): { settings: Settings; ignored: Field[] } {
  const settings = {} as Settings;
  for (const field of PLAIN_FIELDS) {
    settings[field] = query.get(field) ?? stored[field] ?? defaults[field] ?? "";
  }
  for (const field of SECRET_FIELDS) settings[field] = stored[field] ?? "";
  const ignored = SECRET_FIELDS.filter((field) => query.has(field));
  return { settings, ignored };
}

/** The query without `fields` (to take secrets, or the form's fields, out of the address bar). */
export function queryWithout(query: URLSearchParams, fields: readonly Field[]): string {
  const rest = new URLSearchParams(query);
  for (const field of fields) rest.delete(field);
  const text = rest.toString();
  return text ? `?${text}` : "";
}
