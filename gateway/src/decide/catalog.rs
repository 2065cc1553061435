//! The product catalog behind `compare` nudges: names, prices, review scores
//! and what each product works with. Parsed strictly from TOML (unknown
//! fields are refused; every problem names its path), then used read-only.
//!
//! ```toml
//! currency = "EUR"            # default for products that do not say
//!
//! [[products]]
//! id = "sku-lt-100"
//! name = "Aero 14"
//! category = "laptops"        # matches a person's interests
//! price = "1099.00"           # decimal string, or `price_cents = 109900`
//! rating = 4.4                # review score 0..=5
//! reviews = 812               # how many reviews the score is from
//! works_with = ["os:android", "phone:pixel-8"]
//! [products.specs]
//! weight = "1.3 kg"
//! ```
//!
//! Comparison items are ordered objectively (rating, then price, then the
//! number of reviews, then id), never by margin or stock.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// A validated product.
#[derive(Clone, Debug, PartialEq)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub category: String,
    pub price: Price,
    /// Average review score, 0..=5.
    pub rating: f64,
    pub reviews: u32,
    pub specs: BTreeMap<String, String>,
    /// `kind:model` tags, lower case, e.g. `phone:pixel-8`, `os:android`.
    pub works_with: Vec<String>,
}

/// A price in minor units (cents) of an ISO 4217 currency.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Price {
    pub cents: i64,
    pub currency: String,
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:02} {}",
            self.cents / 100,
            self.cents % 100,
            self.currency
        )
    }
}

/// A validated catalog.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    pub products: Vec<Product>,
}

/// One problem in a catalog file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogProblem {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for CatalogProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Not TOML, a wrong type or an unknown field (the reason names the line).
    #[error("{file}: {reason}")]
    Parse { file: String, reason: String },
    #[error("{file}: {} problem(s):\n  {}", problems.len(), problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        file: String,
        problems: Vec<CatalogProblem>,
    },
}

/// One row of a comparison, as it goes into the nudge's `items`
/// (docs/design.md §6: name, price, rating, compatible-with).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    pub name: String,
    /// Display form, e.g. `"1099.00 EUR"`.
    pub price: String,
    pub price_cents: i64,
    pub currency: String,
    pub rating: f64,
    pub reviews: u32,
    /// The things the person told us they own that this product works with.
    pub compatible_with: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    currency: Option<String>,
    #[serde(default)]
    products: Vec<RawProduct>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProduct {
    id: String,
    name: String,
    category: String,
    price: Option<String>,
    price_cents: Option<i64>,
    currency: Option<String>,
    rating: f64,
    reviews: i64,
    #[serde(default)]
    specs: BTreeMap<String, SpecValue>,
    #[serde(default)]
    works_with: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SpecValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl SpecValue {
    fn into_text(self) -> String {
        match self {
            SpecValue::Text(s) => s,
            SpecValue::Int(i) => i.to_string(),
            SpecValue::Float(f) => f.to_string(),
            SpecValue::Bool(b) => b.to_string(),
        }
    }
}

const MAX_PRODUCTS: usize = 10_000;
const MAX_TEXT: usize = 120;

/// Parse a decimal price like `"1099"`, `"1099.5"` or `"1099.00"` into cents.
fn parse_decimal_cents(text: &str) -> Result<i64, String> {
    let bad = || format!("must be a decimal like \"1099.00\", got {text:?}");
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 2
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (text.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let frac: i64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>().map_err(|_| bad())? * 10,
        _ => frac.parse().map_err(|_| bad())?,
    };
    whole
        .checked_mul(100)
        .and_then(|c| c.checked_add(frac))
        .ok_or_else(bad)
}

fn valid_currency(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}

fn valid_tag(tag: &str) -> bool {
    match tag.split_once(':') {
        Some((kind, model)) => {
            let ok = |s: &str| {
                !s.is_empty()
                    && s.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
                    })
            };
            ok(kind) && ok(model)
        }
        None => false,
    }
}

impl Catalog {
    /// Parse and validate; `file` only labels the errors. Pure: the
    /// configuration's read step reads the file (`config/read.rs`).
    pub fn from_toml_str(file: &str, text: &str) -> Result<Catalog, CatalogError> {
        let raw: RawCatalog = toml::from_str(text).map_err(|e| CatalogError::Parse {
            file: file.to_string(),
            reason: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        let mut problems = Vec::new();
        let mut add = |path: String, reason: String| problems.push(CatalogProblem { path, reason });
        if let Some(c) = &raw.currency {
            if !valid_currency(c) {
                add(
                    "currency".into(),
                    "must be an ISO 4217 code like \"EUR\"".into(),
                );
            }
        }
        if raw.products.len() > MAX_PRODUCTS {
            add(
                "products".into(),
                format!("at most {MAX_PRODUCTS} products"),
            );
        }
        let mut ids = HashSet::new();
        let mut products = Vec::with_capacity(raw.products.len());
        for (i, p) in raw.products.into_iter().enumerate() {
            let path = |f: &str| format!("products[{i}].{f}");
            if crate::identity::person::validate_topic_id("id", &p.id).is_err() {
                add(
                    path("id"),
                    "must be 1 to 64 letters, digits, '-', '_' or '.'".into(),
                );
            }
            if !ids.insert(p.id.clone()) {
                add(path("id"), format!("duplicate product {:?}", p.id));
            }
            for (field, text) in [("name", &p.name), ("category", &p.category)] {
                if text.trim().is_empty() || text.chars().count() > MAX_TEXT {
                    add(path(field), format!("must be 1 to {MAX_TEXT} characters"));
                }
            }
            let cents = match (&p.price, p.price_cents) {
                (Some(_), Some(_)) => {
                    add(path("price"), "give price or price_cents, not both".into());
                    0
                }
                (None, None) => {
                    add(path("price"), "missing (or give price_cents)".into());
                    0
                }
                (Some(text), None) => parse_decimal_cents(text).unwrap_or_else(|e| {
                    add(path("price"), e);
                    0
                }),
                (None, Some(c)) if c < 0 => {
                    add(path("price_cents"), "must be >= 0".into());
                    0
                }
                (None, Some(c)) => c,
            };
            let currency = match p.currency.or_else(|| raw.currency.clone()) {
                Some(c) if valid_currency(&c) => c,
                Some(_) => {
                    add(
                        path("currency"),
                        "must be an ISO 4217 code like \"EUR\"".into(),
                    );
                    String::new()
                }
                None => {
                    add(
                        path("currency"),
                        "missing: set it here or at the top of the file".into(),
                    );
                    String::new()
                }
            };
            if !(p.rating.is_finite() && (0.0..=5.0).contains(&p.rating)) {
                add(path("rating"), "must be a number from 0 to 5".into());
            }
            let reviews = u32::try_from(p.reviews).unwrap_or_else(|_| {
                add(path("reviews"), "must be an integer >= 0".into());
                0
            });
            if reviews == 0 && p.rating > 0.0 {
                add(path("reviews"), "a rating needs at least one review".into());
            }
            for (j, tag) in p.works_with.iter().enumerate() {
                if !valid_tag(tag) {
                    add(
                        format!("products[{i}].works_with[{j}]"),
                        "must look like \"kind:model\" in lower case, e.g. \"phone:pixel-8\""
                            .into(),
                    );
                }
            }
            let specs: BTreeMap<String, String> = p
                .specs
                .into_iter()
                .map(|(k, v)| (k, v.into_text()))
                .collect();
            for (k, v) in &specs {
                if v.chars().count() > MAX_TEXT {
                    add(
                        format!("products[{i}].specs.{k}"),
                        format!("at most {MAX_TEXT} characters"),
                    );
                }
            }
            products.push(Product {
                id: p.id,
                name: p.name,
                category: p.category,
                price: Price { cents, currency },
                rating: p.rating,
                reviews,
                specs,
                works_with: p.works_with,
            });
        }
        if !problems.is_empty() {
            return Err(CatalogError::Invalid {
                file: file.to_string(),
                problems,
            });
        }
        Ok(Catalog { products })
    }

    /// Products of a category, in comparison order.
    pub fn in_category(&self, category: &str) -> Vec<&Product> {
        let mut found: Vec<&Product> = self
            .products
            .iter()
            .filter(|p| p.category == category)
            .collect();
        found.sort_by(|a, b| objective_order(a, b));
        found
    }
}

/// Best rated first; then cheaper; then more reviews; then by id so that
/// the order is total and stable.
fn objective_order(a: &Product, b: &Product) -> std::cmp::Ordering {
    b.rating
        .total_cmp(&a.rating)
        .then_with(|| a.price.cents.cmp(&b.price.cents))
        .then_with(|| b.reviews.cmp(&a.reviews))
        .then_with(|| a.id.cmp(&b.id))
}

/// The `items` of a `compare` nudge: up to `max` products of `category`, in
/// objective order, each with the things from `person_owns` it works with.
pub fn comparison_items(
    catalog: &Catalog,
    category: &str,
    person_owns: &[String],
    max: usize,
) -> Vec<Item> {
    catalog
        .in_category(category)
        .into_iter()
        .take(max)
        .map(|p| Item {
            id: p.id.clone(),
            name: p.name.clone(),
            price: p.price.to_string(),
            price_cents: p.price.cents,
            currency: p.price.currency.clone(),
            rating: p.rating,
            reviews: p.reviews,
            compatible_with: person_owns
                .iter()
                .filter(|owned| {
                    p.works_with
                        .iter()
                        .any(|w| w.eq_ignore_ascii_case(owned.trim()))
                })
                .cloned()
                .collect(),
        })
        .collect()
}

/// Items as the JSON values [`super::NudgePayload::items`] holds.
pub fn items_json(items: &[Item]) -> Vec<serde_json::Value> {
    items
        .iter()
        .map(|i| serde_json::to_value(i).expect("an item always serialises"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../config/catalog-example.toml");

    #[test]
    fn the_shipped_example_parses() {
        let c = Catalog::from_toml_str("example", EXAMPLE).unwrap();
        assert!(c.in_category("laptops").len() >= 3);
        assert!(c.in_category("headphones").len() >= 3);
    }

    #[test]
    fn prices_parse_as_decimals_or_cents() {
        assert_eq!(parse_decimal_cents("1099"), Ok(109_900));
        assert_eq!(parse_decimal_cents("1099.5"), Ok(109_950));
        assert_eq!(parse_decimal_cents("0.99"), Ok(99));
        for bad in ["", "1.", ".5", "1.999", "-3", "1,00", "1e3", " 1"] {
            assert!(parse_decimal_cents(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused_with_their_path() {
        let unknown = "[[products]]\nid = \"a\"\nname = \"A\"\ncategory = \"x\"\nprice = \"1\"\ncurrency = \"EUR\"\nrating = 4.0\nreviews = 3\ncolour = \"red\"\n";
        let e = Catalog::from_toml_str("c.toml", unknown)
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let bad = r#"
currency = "eur"
[[products]]
id = "a b"
name = ""
category = "laptops"
price = "12.345"
rating = 7.0
reviews = -1
works_with = ["Pixel 8"]
"#;
        let CatalogError::Invalid { problems, .. } =
            Catalog::from_toml_str("c.toml", bad).unwrap_err()
        else {
            panic!("expected validation problems");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "currency",
            "products[0].id",
            "products[0].name",
            "products[0].price",
            "products[0].rating",
            "products[0].reviews",
            "products[0].works_with[0]",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
    }

    #[test]
    fn comparison_is_objective_and_says_what_works_with_what_you_own() {
        let c = Catalog::from_toml_str("example", EXAMPLE).unwrap();
        let owns = vec!["phone:pixel-8".to_string(), "car:volvo".to_string()];
        let items = comparison_items(&c, "laptops", &owns, 3);
        assert_eq!(items.len(), 3);
        for pair in items.windows(2) {
            assert!(
                pair[0].rating > pair[1].rating
                    || (pair[0].rating == pair[1].rating
                        && pair[0].price_cents <= pair[1].price_cents)
            );
        }
        assert!(items.iter().any(|i| i.compatible_with == ["phone:pixel-8"]));
        assert!(
            items
                .iter()
                .all(|i| !i.compatible_with.contains(&"car:volvo".to_string()))
        );
        assert!(comparison_items(&c, "fridges", &owns, 3).is_empty());
        let json = serde_json::to_value(&items[0]).unwrap();
        for key in ["name", "price", "rating", "compatible_with"] {
            assert!(json.get(key).is_some(), "{key}");
        }
        // No pressure wording in what the catalog puts in front of people.
        for p in &c.products {
            assert!(super::super::wording::pressure_phrases(&p.name).is_empty());
        }
    }
}
