//! Importing person records from a file (`people import`), as CSV or as JSON
//! lines. Every row becomes the JSON of docs/design.md §5 and goes through
//! [`PersonRecord::from_value`], so an imported record is validated exactly
//! like one from the CRM topic. The whole file is checked before anything is
//! returned: a bad row rejects the file (docs/design.md §4 invariant 5).
//!
//! # CSV format
//!
//! RFC 4180: comma-separated, fields may be quoted with `"` (a quote inside
//! is doubled, and a quoted field may hold commas and line breaks), lines end
//! in LF or CRLF, a leading UTF-8 byte-order mark is ignored, blank lines are
//! skipped. The first line is the header and must name exactly these columns,
//! in any order (see [`CSV_HEADER`]):
//!
//! | column | content |
//! |---|---|
//! | `person`, `recipient` | ids: 1 to 64 of letters, digits, `-`, `_`, `.` |
//! | `timezone` | IANA zone, or empty for the store's |
//! | `app_keys`, `emails`, `cards` | `;`-separated lists (may be empty) |
//! | `proximity`, `product_info`, `offers`, `thanks`, `feedback` | `true` / `false` (any case; empty is false) |
//! | `interests`, `owns` | `;`-separated lists |
//!
//! Cells are trimmed; list items are trimmed and may not be empty. Errors
//! name the line and the column (`line 4: app_keys[1]: not hex: ...`).
//!
//! The parser is a few dozen lines rather than the `csv` crate: the format is
//! fixed, small and needs line numbers of our own choosing in errors.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::person::{Identity, PersonRecord, Purpose, RecordError};

/// The columns a people CSV file must have.
pub const CSV_HEADER: &str = "person,recipient,timezone,app_keys,emails,cards,\
proximity,product_info,offers,thanks,feedback,interests,owns";

/// Why an import file was rejected: where, which column (or field), why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {field}: {reason}")]
pub struct ImportError {
    /// 1-based line of the file where the row starts.
    pub line: usize,
    pub field: String,
    pub reason: String,
}

fn at(line: usize, field: impl Into<String>, reason: impl Into<String>) -> ImportError {
    ImportError {
        line,
        field: field.into(),
        reason: reason.into(),
    }
}

/// Parses a whole people CSV file.
pub fn people_from_csv(text: &str) -> Result<Vec<PersonRecord>, ImportError> {
    let mut rows = parse_csv(text)?.into_iter();
    let Some((header_line, header)) = rows.next() else {
        return Err(at(
            1,
            "header",
            format!("the file is empty; expected {CSV_HEADER}"),
        ));
    };
    let expected: Vec<&str> = CSV_HEADER.split(',').collect();
    let mut column: HashMap<&str, usize> = HashMap::new();
    for (i, name) in header.iter().enumerate() {
        let name = name.trim();
        let Some(known) = expected.iter().find(|e| **e == name) else {
            return Err(at(
                header_line,
                name,
                format!("unknown column; the columns are {CSV_HEADER}"),
            ));
        };
        if column.insert(known, i).is_some() {
            return Err(at(header_line, name, "column given twice"));
        }
    }
    if let Some(missing) = expected.iter().find(|e| !column.contains_key(*e)) {
        return Err(at(header_line, *missing, "missing column"));
    }
    let mut checker = FileChecker::default();
    let mut records = Vec::new();
    for (line, row) in rows {
        if row.len() != header.len() {
            return Err(at(
                line,
                "row",
                format!("has {} fields, the header has {}", row.len(), header.len()),
            ));
        }
        let cell = |name: &str| row[column[name]].trim();
        let (value, origins) = row_to_json(&cell).map_err(|(f, r)| at(line, f, r))?;
        let record = PersonRecord::from_value(&value)
            .map_err(|e| at(line, csv_column(&e, &origins), e.reason))?;
        checker.check(line, &record, |i| origins[i].clone())?;
        records.push(record);
    }
    Ok(records)
}

/// Parses a people file of one JSON record a line (the CRM topic's format).
/// Blank lines are skipped.
pub fn people_from_json_lines(text: &str) -> Result<Vec<PersonRecord>, ImportError> {
    let mut checker = FileChecker::default();
    let mut records = Vec::new();
    for (i, row) in text.lines().enumerate() {
        if row.trim().is_empty() {
            continue;
        }
        let record = PersonRecord::from_json(row).map_err(|e| at(i + 1, e.field, e.reason))?;
        checker.check(i + 1, &record, |j| format!("identities[{j}]"))?;
        records.push(record);
    }
    Ok(records)
}

/// Rules across the rows of one file: a person appears once, and an identity
/// belongs to one row (the file would otherwise contradict itself).
#[derive(Default)]
struct FileChecker {
    people: HashMap<String, usize>,
    identities: HashMap<Identity, usize>,
}

impl FileChecker {
    fn check(
        &mut self,
        line: usize,
        record: &PersonRecord,
        field_of: impl Fn(usize) -> String,
    ) -> Result<(), ImportError> {
        if let Some(first) = self.people.insert(record.person.as_str().to_string(), line) {
            return Err(at(line, "person", format!("same person as line {first}")));
        }
        for (i, identity) in record.identities.iter().enumerate() {
            if let Some(first) = self.identities.insert(identity.clone(), line) {
                return Err(at(
                    line,
                    field_of(i),
                    format!("also given to another person on line {first}"),
                ));
            }
        }
        Ok(())
    }
}

/// One CSV row as the JSON of a person record, and for each identity the
/// column item it came from (`emails[1]`).
fn row_to_json<'a>(
    cell: &impl Fn(&str) -> &'a str,
) -> Result<(Value, Vec<String>), (String, String)> {
    let list = |name: &str| -> Result<Vec<&'a str>, (String, String)> {
        let text = cell(name);
        if text.is_empty() {
            return Ok(Vec::new());
        }
        text.split(';')
            .map(str::trim)
            .enumerate()
            .map(|(i, item)| {
                if item.is_empty() {
                    Err((format!("{name}[{i}]"), "empty item".to_string()))
                } else {
                    Ok(item)
                }
            })
            .collect()
    };
    let mut identities = Vec::new();
    let mut origins = Vec::new();
    for (column, kind, field) in [
        ("app_keys", "app", "key"),
        ("emails", "email", "value"),
        ("cards", "card", "value"),
    ] {
        for (i, item) in list(column)?.into_iter().enumerate() {
            identities.push(json!({"kind": kind, field: item}));
            origins.push(format!("{column}[{i}]"));
        }
    }
    let mut consent = serde_json::Map::new();
    for purpose in Purpose::ALL {
        let name = purpose.as_str();
        let on = match cell(name).to_ascii_lowercase().as_str() {
            "true" => true,
            "false" | "" => false,
            _ => return Err((name.to_string(), "must be true or false".to_string())),
        };
        consent.insert(name.to_string(), Value::Bool(on));
    }
    let timezone = match cell("timezone") {
        "" => Value::Null,
        tz => Value::String(tz.to_string()),
    };
    let value = json!({
        "person": cell("person"),
        "recipient": cell("recipient"),
        "timezone": timezone,
        "identities": identities,
        "consent": consent,
        "interests": list("interests")?,
        "owns": list("owns")?,
    });
    Ok((value, origins))
}

/// Maps a record error's JSON path back to the CSV column it came from.
fn csv_column(e: &RecordError, origins: &[String]) -> String {
    if let Some(rest) = e.field.strip_prefix("identities[") {
        let origin = rest
            .split_once(']')
            .and_then(|(i, _)| i.parse::<usize>().ok())
            .and_then(|i| origins.get(i));
        if let Some(origin) = origin {
            return origin.clone();
        }
    }
    if e.field == "identities" {
        return "app_keys/emails/cards".to_string();
    }
    match e.field.strip_prefix("consent.") {
        Some(purpose) => purpose.to_string(),
        None => e.field.clone(),
    }
}

/// Splits RFC 4180 text into rows of fields, each with the line it starts on.
fn parse_csv(text: &str) -> Result<Vec<(usize, Vec<String>)>, ImportError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut row: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut row_line = 1;
    let mut in_quotes = false;
    // The current field was quoted and its closing quote has been seen.
    let mut closed = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    in_quotes = false;
                    closed = true;
                }
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                row.push(std::mem::take(&mut field));
                closed = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                let blank = row.len() == 1 && row[0].is_empty() && !closed;
                let done = std::mem::take(&mut row);
                if !blank {
                    rows.push((row_line, done));
                }
                closed = false;
                line += 1;
                row_line = line;
            }
            '"' if field.is_empty() && !closed => in_quotes = true,
            '"' => {
                return Err(at(
                    line,
                    "csv",
                    "a quote inside an unquoted field (quote the whole field and double the quote)",
                ));
            }
            _ if closed => {
                return Err(at(line, "csv", "text after the closing quote of a field"));
            }
            '\r' => {
                return Err(at(
                    line,
                    "csv",
                    "a carriage return not followed by a line feed",
                ));
            }
            c => field.push(c),
        }
    }
    if in_quotes {
        return Err(at(row_line, "csv", "a quoted field is never closed"));
    }
    if !row.is_empty() || !field.is_empty() || closed {
        row.push(field);
        rows.push((row_line, row));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW_1: &str = "p-1001,r-5f2c9a,,75c734c6dd1a782de7a965da5eb93125,ana@example.com;Ana.B@Example.com,,\
true,true,false,true,TRUE,\"laptops;headphones, big\",phone:pixel-8";

    fn file(rows: &[&str]) -> String {
        let mut text = format!("\u{feff}{CSV_HEADER}\r\n");
        for row in rows {
            text.push_str(row);
            text.push_str("\r\n");
        }
        text
    }

    #[test]
    fn a_csv_row_is_the_same_record_as_its_json() {
        let records = people_from_csv(&file(&[ROW_1])).unwrap();
        let json = PersonRecord::from_json(
            r#"{"person": "p-1001", "recipient": "r-5f2c9a", "timezone": null,
             "identities": [{"kind": "app", "key": "75c734c6dd1a782de7a965da5eb93125"},
                            {"kind": "email", "value": "ana@example.com"},
                            {"kind": "email", "value": "ana.b@example.com"}],
             "consent": {"proximity": true, "product_info": true, "offers": false,
                         "thanks": true, "feedback": true},
             "interests": ["laptops", "headphones, big"], "owns": ["phone:pixel-8"]}"#,
        )
        .unwrap();
        assert_eq!(records, vec![json]);
    }

    #[test]
    fn columns_in_any_order_quotes_and_line_breaks() {
        let text = "owns,interests,feedback,thanks,offers,product_info,proximity,cards,emails,app_keys,timezone,recipient,person\n\
\"a \"\"quoted\"\" thing\",\"line one\nline two\",,,,,,c-9,,,Europe/Lisbon,r-2,p-2\n\
\n\
,,false,false,false,false,true,,,,,r-3,p-3";
        let records = people_from_csv(text).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].owns, vec!["a \"quoted\" thing".to_string()]);
        assert_eq!(records[0].interests, vec!["line one\nline two".to_string()]);
        assert_eq!(records[0].timezone.as_deref(), Some("Europe/Lisbon"));
        assert_eq!(
            records[0].identities,
            vec![Identity::Card {
                value: "c-9".into()
            }]
        );
        assert!(records[1].consent.proximity && !records[1].consent.offers);
    }

    #[test]
    fn errors_name_line_and_column() {
        // Row 2 of data starts on line 4: the first row's quoted field spans
        // two lines.
        let first = ROW_1.replace("phone:pixel-8", "\"phone:\npixel-8\"");
        let cases: Vec<(String, usize, &str)> = vec![
            (
                file(&[
                    &first,
                    &ROW_1
                        .replace("p-1001", "p-2")
                        .replace("75c734c6dd1a782de7a965da5eb93125", "ab;xx"),
                ]),
                4,
                "app_keys[0]",
            ),
            (
                file(&[&ROW_1.replace(
                    "75c734c6dd1a782de7a965da5eb93125",
                    "75c734c6dd1a782de7a965da5eb93125;zz",
                )]),
                2,
                "app_keys[1]",
            ),
            (
                file(&[&ROW_1.replace("ana@example.com", "ana")]),
                2,
                "emails[0]",
            ),
            (
                file(&[&ROW_1.replace("Ana.B@Example.com", "ANA@example.com")]),
                2,
                "emails[1]",
            ),
            (file(&[&ROW_1.replace("false", "no")]), 2, "offers"),
            (
                file(&[&ROW_1.replace("r-5f2c9a,,", "r-5f2c9a,Mars/Base,")]),
                2,
                "timezone",
            ),
            (file(&[&ROW_1.replace("r-5f2c9a", "r 5f")]), 2, "recipient"),
            (
                file(&[&ROW_1.replace("laptops;headphones", "laptops;;headphones")]),
                2,
                "interests[1]",
            ),
            (file(&[&ROW_1.replace(",phone:pixel-8", "")]), 2, "row"),
            (file(&[ROW_1, ROW_1]), 3, "person"),
            (
                file(&[
                    ROW_1,
                    &ROW_1
                        .replace("p-1001", "p-2")
                        .replace("75c734c6dd1a782de7a965da5eb93125", ""),
                ]),
                3,
                "emails[0]",
            ),
            (
                file(&[&ROW_1.replace("phone:pixel-8", "phone\"pixel")]),
                2,
                "csv",
            ),
            (
                file(&[&ROW_1.replace("phone:pixel-8", "\"phone\"pixel")]),
                2,
                "csv",
            ),
            (
                file(&[&ROW_1.replace("phone:pixel-8", "\"phone:pixel-8")]),
                2,
                "csv",
            ),
            (CSV_HEADER.replace("owns", "pets"), 1, "pets"),
            (CSV_HEADER.replace(",owns", ""), 1, "owns"),
            (CSV_HEADER.replace("owns", "person"), 1, "person"),
            (String::new(), 1, "header"),
        ];
        for (text, line, field) in cases {
            let e = people_from_csv(&text).unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (line, field), "{text:?}: {e}");
        }
    }

    #[test]
    fn json_lines_import_checks_across_rows() {
        let one = r#"{"person": "p-1", "recipient": "r-1", "identities": [{"kind": "card", "value": "c-1"}]}"#;
        let two = r#"{"person": "p-2", "recipient": "r-2", "identities": [{"kind": "card", "value": "c-1"}]}"#;
        assert_eq!(
            people_from_json_lines(&format!("{one}\n\n")).unwrap().len(),
            1
        );
        let e = people_from_json_lines(&format!("{one}\n\n{two}\n")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (3, "identities[0]"));
        let e = people_from_json_lines(r#"{"person": "p-1"}"#).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (1, "recipient"));
    }
}
