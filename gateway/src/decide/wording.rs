//! Wording checks for rule texts (docs/design.md §1: information, not pressure;
//! thanks with nothing asked in return). The config layer calls
//! [`check_wording`] on every rule's title and body; tests use the same
//! lists on what the gateway builds.
//!
//! Matching is on whole words of the lower-cased text with punctuation
//! removed, so "Hurry!" and "LAST-CHANCE" are caught and "buyer's guide" is
//! caught too (a thank-you has no business with buying); "outbuy" is not.

use super::NudgeKind;

/// Urgency and pressure: refused in every kind of nudge.
pub const PRESSURE_PHRASES: &[&str] = &[
    "limited time",
    "hurry",
    "only today",
    "today only",
    "last chance",
    "buy now",
    "act now",
    "order now",
    "don t miss",
    "dont miss",
    "while stocks last",
    "while supplies last",
    "ends soon",
    "ending soon",
    "selling fast",
    "almost gone",
    "only a few left",
    "before it s gone",
    "final hours",
    "now or never",
];

/// Commercial asks: refused in `thanks` and `feedback` nudges, which ask
/// for nothing in return.
pub const COMMERCIAL_WORDS: &[&str] = &[
    "buy",
    "buys",
    "buying",
    "buyer",
    "price",
    "prices",
    "offer",
    "offers",
    "discount",
    "discounts",
    "sale",
    "sales",
    "deal",
    "deals",
    "coupon",
    "coupons",
    "voucher",
    "vouchers",
    "save",
    "savings",
    "cheap",
    "cheaper",
    "shop now",
    "spend",
    "upgrade",
    "promo",
    "promotion",
];

/// Symbols that mean money or a percentage off.
const COMMERCIAL_SYMBOLS: &[char] = &['%', '€', '$', '£', '¥'];

/// Lower case, every run of non-alphanumeric characters turned into one
/// space, padded with a space at each end so that `" word "` finds words.
fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push(' ');
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            out.push(c);
        } else if !out.ends_with(' ') {
            out.push(' ');
        }
    }
    if !out.ends_with(' ') {
        out.push(' ');
    }
    out
}

fn found<'l>(normalised: &str, list: &'l [&'l str]) -> Vec<&'l str> {
    list.iter()
        .copied()
        .filter(|p| normalised.contains(&format!(" {p} ")))
        .collect()
}

/// The pressure phrases `text` contains.
pub fn pressure_phrases(text: &str) -> Vec<&'static str> {
    found(&normalise(text), PRESSURE_PHRASES)
}

/// The commercial words and money symbols `text` contains.
pub fn commercial_words(text: &str) -> Vec<String> {
    let mut hits: Vec<String> = found(&normalise(text), COMMERCIAL_WORDS)
        .into_iter()
        .map(str::to_string)
        .collect();
    hits.extend(
        COMMERCIAL_SYMBOLS
            .iter()
            .filter(|s| text.contains(**s))
            .map(|s| s.to_string()),
    );
    hits
}

/// Whether `text` is acceptable wording for a nudge of `kind`. The error
/// lists the offending words, for the config layer to prefix with the path.
pub fn check_wording(kind: NudgeKind, text: &str) -> Result<(), String> {
    let pressure = pressure_phrases(text);
    if !pressure.is_empty() {
        return Err(format!(
            "pressure wording is not allowed: {}",
            quoted(pressure.iter().map(|s| s.to_string()))
        ));
    }
    if matches!(kind, NudgeKind::Thanks | NudgeKind::Feedback) {
        let commercial = commercial_words(text);
        if !commercial.is_empty() {
            return Err(format!(
                "a {} nudge asks for nothing in return; remove {}",
                kind.as_str(),
                quoted(commercial.into_iter())
            ));
        }
    }
    Ok(())
}

fn quoted(words: impl Iterator<Item = String>) -> String {
    words
        .map(|w| format!("{w:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_is_refused_everywhere() {
        for text in [
            "Hurry! Laptops",
            "LAST-CHANCE to compare",
            "Limited   time: specs",
            "Only today",
            "Don't miss the reviews",
            "buy now",
        ] {
            for kind in NudgeKind::ALL {
                assert!(check_wording(kind, text).is_err(), "{kind:?} {text:?}");
            }
        }
        assert!(
            check_wording(
                NudgeKind::Compare,
                "Side-by-side specs, reviews and prices for the models on this table."
            )
            .is_ok()
        );
        assert!(check_wording(NudgeKind::Offer, "10% off headphones this month").is_ok());
    }

    #[test]
    fn thanks_and_feedback_ask_for_nothing() {
        assert!(check_wording(NudgeKind::Thanks, "Thank you for visiting us again.").is_ok());
        assert!(check_wording(NudgeKind::Thanks, "Thank you for your purchase.").is_ok());
        for bad in [
            "Thanks! Here is 10% off",
            "Thanks, buy again soon",
            "Thanks: a special offer for you",
            "Thanks — save €5 next time",
        ] {
            assert!(check_wording(NudgeKind::Thanks, bad).is_err(), "{bad:?}");
        }
        assert!(check_wording(NudgeKind::Feedback, "Did you find what you came for?").is_ok());
        assert!(check_wording(NudgeKind::Feedback, "Rate us and get a voucher").is_err());
        // "outbuy" is not "buy".
        assert!(commercial_words("outbuy").is_empty());
    }
}
