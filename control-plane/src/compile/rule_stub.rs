use switchyard_shared::rule::{Expr, Matcher};
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("stub")]
    Stub,
}
pub fn parse_rule(text: &str) -> Result<Expr, RuleError> {
    let t = text.trim();
    if let Some(h) = t.strip_prefix("Host(`").and_then(|r| r.strip_suffix("`)")) {
        return Ok(Expr::Matcher(Matcher::Host(h.to_lowercase())));
    }
    if let Some(h) = t
        .strip_prefix("PathPrefix(`")
        .and_then(|r| r.strip_suffix("`)"))
    {
        return Ok(Expr::Matcher(Matcher::PathPrefix(h.into())));
    }
    Err(RuleError::Stub)
}
