//! Rule titles and bodies may name a few fields: `{person.first_interest}`,
//! `{zone}`, `{catalog.category}`, `{catalog.count}`, `{catalog.top_name}`,
//! `{catalog.top_rating}`, `{offer.title}`. `{{` and `}}` stand for literal
//! braces. Substitution is one pass of plain text: no expressions, no code,
//! and a substituted value is never read as a template again.
//!
//! The config layer calls [`validate_template`] so that an unknown field is
//! refused when the file is loaded, not when a customer walks by.

use std::fmt;

/// The fields a template may use.
pub const FIELDS: [&str; 7] = [
    "person.first_interest",
    "zone",
    "catalog.category",
    "catalog.count",
    "catalog.top_name",
    "catalog.top_rating",
    "offer.title",
];

const MAX_FIELDS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateError {
    /// The text is not a valid template (config-time error).
    Syntax(String),
    /// The template names a field that has no value for this nudge (for
    /// example `{catalog.top_name}` with no product in the category): the
    /// caller holds the nudge back rather than send a sentence with a hole.
    Missing(&'static str),
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::Syntax(reason) => f.write_str(reason),
            TemplateError::Missing(field) => write!(f, "no value for {{{field}}}"),
        }
    }
}

impl std::error::Error for TemplateError {}

enum Piece<'t> {
    Text(&'t str),
    Field(&'static str),
}

fn parse(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut fields = 0;
    while let Some(pos) = rest.find(['{', '}']) {
        if pos > 0 {
            pieces.push(Piece::Text(&rest[..pos]));
        }
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("{{") {
            pieces.push(Piece::Text("{"));
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            pieces.push(Piece::Text("}"));
            rest = after;
        } else if tail.starts_with('}') {
            return Err("a lone '}' (write '}}' for a literal brace)".into());
        } else {
            let Some(end) = tail.find('}') else {
                return Err("a '{' is never closed (write '{{' for a literal brace)".into());
            };
            let name = tail[1..end].trim();
            let Some(field) = FIELDS.iter().find(|f| **f == name) else {
                return Err(format!(
                    "unknown field {{{name}}}; known: {}",
                    FIELDS.map(|f| format!("{{{f}}}")).join(", ")
                ));
            };
            fields += 1;
            if fields > MAX_FIELDS {
                return Err(format!("at most {MAX_FIELDS} fields"));
            }
            pieces.push(Piece::Field(field));
            rest = &tail[end + 1..];
        }
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

/// Whether `text` is a valid template: every `{field}` is known and braces
/// balance. The error says what is wrong, for the config layer to prefix
/// with the path (`rules[2].body`).
pub fn validate_template(text: &str) -> Result<(), String> {
    parse(text).map(|_| ())
}

/// The values a template can use for one nudge. `None` means "not
/// available": a template that needs it does not render.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TemplateContext {
    pub first_interest: Option<String>,
    pub zone: Option<String>,
    pub catalog_category: Option<String>,
    pub catalog_count: Option<usize>,
    pub catalog_top_name: Option<String>,
    pub catalog_top_rating: Option<f64>,
    pub offer_title: Option<String>,
}

impl TemplateContext {
    fn value(&self, field: &'static str) -> Option<String> {
        match field {
            "person.first_interest" => self.first_interest.clone(),
            "zone" => self.zone.clone(),
            "catalog.category" => self.catalog_category.clone(),
            "catalog.count" => self.catalog_count.map(|c| c.to_string()),
            "catalog.top_name" => self.catalog_top_name.clone(),
            "catalog.top_rating" => self.catalog_top_rating.map(|r| format!("{r:.1}")),
            "offer.title" => self.offer_title.clone(),
            _ => None,
        }
    }
}

/// Fill in `text`. Text without braces comes back unchanged.
pub fn render_template(text: &str, ctx: &TemplateContext) -> Result<String, TemplateError> {
    let pieces = parse(text).map_err(TemplateError::Syntax)?;
    let mut out = String::with_capacity(text.len() + 32);
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Field(f) => out.push_str(&ctx.value(f).ok_or(TemplateError::Missing(f))?),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_filled_in_once_and_braces_escape() {
        let ctx = TemplateContext {
            first_interest: Some("laptops".into()),
            zone: Some("{zone}".into()),
            catalog_count: Some(4),
            catalog_top_name: Some("Air 13".into()),
            catalog_top_rating: Some(4.7),
            ..TemplateContext::default()
        };
        assert_eq!(
            render_template(
                "{catalog.count} {person.first_interest}; best rated: {catalog.top_name} ({catalog.top_rating}/5) {{x}}",
                &ctx
            )
            .unwrap(),
            "4 laptops; best rated: Air 13 (4.7/5) {x}"
        );
        // A value that looks like a template is not expanded again.
        assert_eq!(render_template("in {zone}", &ctx).unwrap(), "in {zone}");
        assert_eq!(
            render_template("plain text", &TemplateContext::default()).unwrap(),
            "plain text"
        );
        assert_eq!(
            render_template("{offer.title}", &ctx),
            Err(TemplateError::Missing("offer.title"))
        );
    }

    #[test]
    fn unknown_fields_and_stray_braces_fail_validation() {
        assert!(validate_template("Hello {person.first_interest} in {zone}").is_ok());
        assert!(validate_template("{ zone }").is_ok());
        let e = validate_template("Hi {person.email}").unwrap_err();
        assert!(e.contains("person.email"), "{e}");
        assert!(validate_template("{zone").is_err());
        assert!(validate_template("zone}").is_err());
        assert!(validate_template("{}").is_err());
        assert!(validate_template("{std::process::exit(1)}").is_err());
    }
}
