import { describe, expect, it } from "vitest";

import { FIELDS, SECRET_FIELDS, parseStored, queryWithout, resolveSettings } from "../src/settings";

describe("settings", () => {
  it("take secrets only from storage, never from the URL", () => {
    const query = new URLSearchParams("store=s1&recipient=r-1&password=pw-in-url&key=00112233445566778899aabbccddeeff");
    const { settings, ignored } = resolveSettings(query, { password: "stored-pw" });
    expect(settings.store).toBe("s1");
    expect(settings.recipient).toBe("r-1");
    expect(settings.password).toBe("stored-pw");
    expect(settings.key).toBe("");
    expect(ignored).toEqual(["password", "key"]);
    expect(queryWithout(query, SECRET_FIELDS)).toBe("?store=s1&recipient=r-1");
  });

  it("take plain fields from the query, then storage, then defaults", () => {
    const { settings, ignored } = resolveSettings(
      new URLSearchParams("recipient=r-2"),
      { recipient: "r-1", store: "s1", key: "ab".repeat(16) },
      { prefix: "retail", store: "other" },
    );
    expect(settings).toMatchObject({ recipient: "r-2", store: "s1", prefix: "retail", broker: "", key: "ab".repeat(16) });
    expect(ignored).toEqual([]);
  });

  it("read only string fields it knows from storage", () => {
    expect(parseStored(null)).toEqual({});
    expect(parseStored("not json")).toEqual({});
    expect(parseStored("[1,2]")).toEqual({});
    expect(parseStored('{"key": 5, "store": "s1", "evil": "x"}')).toEqual({ store: "s1" });
    expect(queryWithout(new URLSearchParams("consent=offers&store=s1"), FIELDS)).toBe("?consent=offers");
    expect(queryWithout(new URLSearchParams("store=s1"), FIELDS)).toBe("");
  });
});
