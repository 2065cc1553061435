//! JSON Lines input (captures, person records): the one reading rule.
//! Lines are numbered from 1, as in an editor; blank lines are skipped (a
//! trailing newline, a separator) but keep their number, so that an error
//! names the line a person would look at.

/// The non-blank lines of `text`, with their 1-based numbers.
pub fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| (index + 1, line))
}

/// Parse every non-blank line with `parse`; the first bad line is an error,
/// with its number (nothing is returned in part).
pub fn parse_all<T, E>(
    text: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, (usize, E)> {
    lines(text)
        .map(|(number, line)| parse(line).map_err(|e| (number, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_lines_from_one_and_skips_blank_ones() {
        let text = "a\n\n  \nb\r\nc";
        let got: Vec<(usize, &str)> = lines(text).collect();
        assert_eq!(got, [(1, "a"), (4, "b"), (5, "c")]);
    }

    #[test]
    fn the_first_bad_line_is_named() {
        let parse = |l: &str| l.parse::<u32>().map_err(|_| l.to_string());
        assert_eq!(parse_all("1\n\n2\n", parse), Ok(vec![1, 2]));
        assert_eq!(parse_all("1\nx\ny\n", parse), Err((2, "x".to_string())));
    }
}
