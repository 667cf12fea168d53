//! The `constraints` expression of the Docker and Swarm providers: a boolean expression over a
//! workload's labels — `Label("key", "value")` (exact match), `LabelRegex("key", "re")` (the
//! value matches the unanchored regex), `!`, `&&`, `||` and parentheses, with Traefik's
//! precedence (`!` binds tightest, then `&&`, then `||`). Pure: parsing happens once at start-up.

use std::collections::BTreeMap;

use regex::Regex;
use thiserror::Error;

/// A `constraints` expression that cannot be parsed; the message names the offset.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("constraints `{expression}`: {reason}")]
pub struct ConstraintError {
    pub expression: String,
    pub reason: String,
}

/// A parsed expression.
#[derive(Clone, Debug)]
pub enum Constraint {
    /// `Label("key", "value")`
    Label(String, String),
    /// `LabelRegex("key", "re")`
    LabelRegex(String, Regex),
    Not(Box<Constraint>),
    And(Box<Constraint>, Box<Constraint>),
    Or(Box<Constraint>, Box<Constraint>),
}

impl Constraint {
    /// Parses `expression`.
    pub fn parse(expression: &str) -> Result<Self, ConstraintError> {
        let mut cursor = Cursor {
            text: expression,
            pos: 0,
        };
        let parsed = cursor.disjunction().and_then(|c| {
            cursor.skip_spaces();
            if cursor.pos == expression.len() {
                Ok(c)
            } else {
                Err(format!("unexpected `{}`", &expression[cursor.pos..]))
            }
        });
        parsed.map_err(|reason| ConstraintError {
            expression: expression.to_owned(),
            reason,
        })
    }

    /// Whether `labels` satisfy the expression. A missing label matches neither form.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Constraint::Label(key, value) => labels.get(key).is_some_and(|v| v == value),
            Constraint::LabelRegex(key, re) => labels.get(key).is_some_and(|v| re.is_match(v)),
            Constraint::Not(inner) => !inner.matches(labels),
            Constraint::And(a, b) => a.matches(labels) && b.matches(labels),
            Constraint::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

/// A recursive-descent reader over the expression text.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_spaces(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// Consumes `token` (after spaces) when it comes next.
    fn accept(&mut self, token: &str) -> bool {
        self.skip_spaces();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), String> {
        if self.accept(token) {
            Ok(())
        } else {
            Err(format!("expected `{token}` at offset {}", self.pos))
        }
    }

    fn disjunction(&mut self) -> Result<Constraint, String> {
        let mut left = self.conjunction()?;
        while self.accept("||") {
            let right = self.conjunction()?;
            left = Constraint::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn conjunction(&mut self) -> Result<Constraint, String> {
        let mut left = self.negation()?;
        while self.accept("&&") {
            let right = self.negation()?;
            left = Constraint::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn negation(&mut self) -> Result<Constraint, String> {
        if self.accept("!") {
            return Ok(Constraint::Not(Box::new(self.negation()?)));
        }
        if self.accept("(") {
            let inner = self.disjunction()?;
            self.expect(")")?;
            return Ok(inner);
        }
        self.skip_spaces();
        let start = self.pos;
        let word: String = self
            .rest()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        self.pos += word.len();
        let regex = match word.as_str() {
            "Label" => false,
            "LabelRegex" => true,
            "" => return Err(format!("expected a matcher at offset {start}")),
            other => {
                return Err(format!(
                    "unknown matcher `{other}` at offset {start} (Docker and Swarm support \
                     Label and LabelRegex)"
                ));
            }
        };
        self.expect("(")?;
        let key = self.quoted()?;
        self.expect(",")?;
        let value = self.quoted()?;
        self.expect(")")?;
        if regex {
            let re = Regex::new(&value).map_err(|e| format!("invalid regex `{value}`: {e}"))?;
            Ok(Constraint::LabelRegex(key, re))
        } else {
            Ok(Constraint::Label(key, value))
        }
    }

    /// A Go-style string literal: `"…"` with backslash escapes, or a raw `` `…` ``.
    fn quoted(&mut self) -> Result<String, String> {
        self.skip_spaces();
        let start = self.pos;
        let mut chars = self.rest().char_indices();
        let quote = match chars.next() {
            Some((_, q @ ('"' | '`'))) => q,
            _ => return Err(format!("expected a quoted string at offset {start}")),
        };
        let mut out = String::new();
        while let Some((i, c)) = chars.next() {
            if c == quote {
                self.pos += i + c.len_utf8();
                return Ok(out);
            }
            if c == '\\' && quote == '"' {
                match chars.next() {
                    Some((_, escaped)) => out.push(escaped),
                    None => break,
                }
            } else {
                out.push(c);
            }
        }
        Err(format!("unterminated string at offset {start}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn label_is_an_exact_key_and_value_match() {
        let c = Constraint::parse(r#"Label("a.b", "c")"#).unwrap();
        assert!(c.matches(&labels(&[("a.b", "c")])));
        assert!(!c.matches(&labels(&[("a.b", "cd")])));
        assert!(!c.matches(&labels(&[("A.B", "c")])));
        assert!(!c.matches(&labels(&[])));
    }

    #[test]
    fn label_regex_is_unanchored() {
        let c = Constraint::parse(r#"LabelRegex("env", "pro")"#).unwrap();
        assert!(c.matches(&labels(&[("env", "production")])));
        assert!(!c.matches(&labels(&[("env", "staging")])));
        assert!(!c.matches(&labels(&[])));
    }

    #[test]
    fn precedence_not_then_and_then_or() {
        let c =
            Constraint::parse(r#"Label("a","1") || Label("b","1") && !Label("c","1")"#).unwrap();
        assert!(c.matches(&labels(&[("a", "1"), ("c", "1")])));
        assert!(c.matches(&labels(&[("b", "1")])));
        assert!(!c.matches(&labels(&[("b", "1"), ("c", "1")])));
        let grouped =
            Constraint::parse(r#"(Label("a","1") || Label("b","1")) && !Label("c","1")"#).unwrap();
        assert!(!grouped.matches(&labels(&[("a", "1"), ("c", "1")])));
        let raw = Constraint::parse("Label(`k`, `v\\x`)").unwrap();
        assert!(raw.matches(&labels(&[("k", "v\\x")])));
    }

    #[test]
    fn errors_say_what_and_where() {
        for (text, needle) in [
            (r#"Tag("x")"#, "unknown matcher `Tag`"),
            (r#"Label("a")"#, "expected `,`"),
            (r#"Label("a", "b""#, "expected `)`"),
            (r#"Label("a", "b) "#, "unterminated string"),
            (r#"LabelRegex("a", "(")"#, "invalid regex"),
            (r#"Label("a","b") &&"#, "expected a matcher"),
            (r#"Label("a","b") x"#, "unexpected `x`"),
        ] {
            let err = Constraint::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
