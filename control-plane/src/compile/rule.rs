//! Parser for Traefik v3 HTTP router rules (``Host(`a.example`) && !PathPrefix(`/admin`)``).
//!
//! It turns rule text into the [`Expr`] tree the proxy evaluates, and validates and normalises
//! every matcher argument the way Traefik does when it builds a router, so a rule accepted here
//! is one Traefik would mount and a rule rejected here is one Traefik would disable. It is pure
//! (no I/O) and does not compute priorities: callers use
//! [`switchyard_shared::rule::default_priority`] on the text as written.
//!
//! Traefik hands the text to Go's `go/parser.ParseExpr` (through `vulcand/predicate`), so the
//! lexical rules are Go's, quirks included. Checked against the Traefik 3.7.15 binary:
//! - arguments are Go string literals: backticks (raw; `\r` dropped) or double quotes (Go
//!   escapes); `'a'` is a Go rune literal and is rejected;
//! - `//` and `/* */` comments are allowed wherever whitespace is;
//! - Go's automatic semicolon insertion applies: a line break right after a matcher name, a string
//!   or `)` ends the expression, so ``Host(`a`)⏎&& Path(`/`)`` is disabled by Traefik while
//!   ``Host(`a`) &&⏎Path(`/`)`` is fine;
//! - an argument list may end with a comma (``Host(`a`,)``) or an ellipsis (``Host(`a`...)``):
//!   Go call syntax that predicate accepts and ignores.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;
use switchyard_shared::rule::{Expr, Matcher};

/// Deepest nesting of `(` groups and `!` accepted. Traefik has no limit of its own (Go's parser
/// gives up at 100 000); ours keeps this recursive-descent parser, and every recursive walk of
/// the tree downstream, far from the stack limit on hostile input.
const MAX_DEPTH: usize = 64;

/// Why a rule was rejected. Positions are byte offsets into the rule text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("empty rule")]
    Empty,
    #[error("unexpected token {found} at {at}; expected {expected}")]
    UnexpectedToken {
        found: String,
        at: usize,
        expected: &'static str,
    },
    #[error("unexpected end of rule at {at}; expected {expected}")]
    UnexpectedEnd { at: usize, expected: &'static str },
    #[error("unclosed `(` at {at}")]
    UnclosedParen { at: usize },
    #[error(
        "line break before {found} at {at} ends the rule (Traefik reads rules as Go expressions); \
         break lines after `&&`, `||`, `(` or `,` instead"
    )]
    LineBreak { found: String, at: usize },
    #[error("single-quoted strings are not allowed at {at}; use backticks or double quotes")]
    SingleQuote { at: usize },
    #[error("unterminated string at {at}")]
    UnterminatedString { at: usize },
    #[error("unterminated comment at {at}")]
    UnterminatedComment { at: usize },
    #[error("invalid escape sequence at {at}: {reason}")]
    InvalidEscape { at: usize, reason: &'static str },
    #[error("string at {at} is not valid utf-8 once unescaped")]
    InvalidUtf8 { at: usize },
    #[error("illegal character {found} at {at}")]
    IllegalChar { found: String, at: usize },
    #[error(
        "rule nested too deeply at {at}; at most {MAX_DEPTH} levels of `(` and `!` are allowed"
    )]
    TooDeep { at: usize },
    #[error("unknown matcher `{name}` at {at}{}", did_you_mean(.suggestion))]
    UnknownMatcher {
        name: String,
        at: usize,
        /// The matcher the user probably meant (other capitalisation, v2 name).
        suggestion: Option<&'static str>,
    },
    #[error("{matcher}: unexpected number of arguments; got {got}, expected {expected}")]
    Arity {
        matcher: &'static str,
        got: usize,
        expected: &'static str,
    },
    #[error("empty argument in {matcher}")]
    EmptyArgument { matcher: &'static str },
    #[error("{matcher}: invalid value {value:?}: {reason}")]
    InvalidValue {
        matcher: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{matcher}: invalid regular expression `{regex}`: {reason}")]
    InvalidRegex {
        matcher: &'static str,
        regex: String,
        reason: String,
    },
}

fn did_you_mean(suggestion: &Option<&'static str>) -> String {
    suggestion.map_or_else(String::new, |s| format!("; did you mean `{s}`?"))
}

/// Parses a Traefik v3 HTTP rule into the compiled tree. Runs of `&&` / `||` are flattened into
/// one [`Expr::All`] / [`Expr::Any`]; a group of one item is the item itself; `!` stays a
/// [`Expr::Not`] (Traefik pushes it down with De Morgan, which is equivalent).
pub fn parse_rule(text: &str) -> Result<Expr, RuleError> {
    let mut lexer = Lexer::new(text);
    let tok = lexer.next_token()?;
    if tok.tok == Tok::Eof {
        return Err(RuleError::Empty);
    }
    let mut parser = Parser {
        lexer,
        tok,
        depth: 0,
    };
    let expr = parser.any()?;
    if parser.tok.tok != Tok::Eof {
        return Err(parser.unexpected("`&&`, `||` or the end of the rule"));
    }
    Ok(expr)
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, PartialEq, Eq)]
enum Tok {
    /// A Go identifier (or number): a matcher name where one is expected.
    Word,
    /// A string literal, already unquoted.
    Str(String),
    LParen,
    RParen,
    Comma,
    Ellipsis,
    And,
    Or,
    Not,
    /// Anything else Go would lex as an operator (`&`, `==`, `.`…): never valid in a rule.
    Other,
    Eof,
}

struct Token<'a> {
    tok: Tok,
    /// The token as written, for error messages.
    text: &'a str,
    at: usize,
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    /// The previous token is one after which Go's scanner turns a line break into `;`
    /// (an identifier, a literal or `)`), which ends the expression.
    ends_line: bool,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        // Go's scanner skips a byte-order mark at the very start only.
        let pos = if src.starts_with('\u{feff}') {
            '\u{feff}'.len_utf8()
        } else {
            0
        };
        Self {
            src,
            pos,
            ends_line: false,
        }
    }

    fn next_token(&mut self) -> Result<Token<'a>, RuleError> {
        let line_break = self.skip_trivia()?;
        let at = self.pos;
        let rest = &self.src[at..];
        let Some(c) = rest.chars().next() else {
            // A line break before the end is fine: ParseExpr consumes one inserted `;`.
            return Ok(Token {
                tok: Tok::Eof,
                text: "",
                at,
            });
        };
        let (tok, len) = match c {
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            ',' => (Tok::Comma, 1),
            '!' => (Tok::Not, 1),
            '&' if rest.starts_with("&&") => (Tok::And, 2),
            '|' if rest.starts_with("||") => (Tok::Or, 2),
            '.' if rest.starts_with("...") => (Tok::Ellipsis, 3),
            '`' => self.raw_string(at)?,
            '"' => self.interpreted_string(at)?,
            '\'' => return Err(RuleError::SingleQuote { at }),
            '\0' | '\u{feff}' => return Err(illegal(c, at)),
            c if is_word_char(c) => {
                let len = rest.find(|c| !is_word_char(c)).unwrap_or(rest.len());
                (Tok::Word, len)
            }
            c => (Tok::Other, c.len_utf8()),
        };
        let text = &self.src[at..at + len];
        if line_break && self.ends_line {
            return Err(RuleError::LineBreak {
                found: describe(text),
                at,
            });
        }
        self.ends_line = matches!(tok, Tok::Word | Tok::Str(_) | Tok::RParen);
        self.pos = at + len;
        Ok(Token { tok, text, at })
    }

    /// Skips whitespace and comments; returns whether they held a line break as Go's scanner
    /// counts them (a newline, a `//` comment, or a `/* */` comment spanning lines).
    fn skip_trivia(&mut self) -> Result<bool, RuleError> {
        let mut line_break = false;
        loop {
            let rest = &self.src[self.pos..];
            if let Some(body) = rest.strip_prefix("//") {
                let len = body.find('\n').map_or(body.len(), |n| n + 1);
                check_legal(&body[..len], self.pos + 2)?;
                self.pos += 2 + len;
                line_break = true;
            } else if let Some(body) = rest.strip_prefix("/*") {
                let Some(end) = body.find("*/") else {
                    return Err(RuleError::UnterminatedComment { at: self.pos });
                };
                check_legal(&body[..end], self.pos + 2)?;
                line_break |= body[..end].contains('\n');
                self.pos += 2 + end + 2;
            } else {
                // Go's whitespace is exactly these four; U+00A0 and friends are illegal.
                match rest.as_bytes().first() {
                    Some(b' ' | b'\t' | b'\r') => self.pos += 1,
                    Some(b'\n') => {
                        self.pos += 1;
                        line_break = true;
                    }
                    _ => return Ok(line_break),
                }
            }
        }
    }

    /// A backtick string: no escapes; Go drops carriage returns from raw literals.
    fn raw_string(&self, at: usize) -> Result<(Tok, usize), RuleError> {
        let body_at = at + 1;
        let rest = &self.src[body_at..];
        let Some(end) = rest.find('`') else {
            return Err(RuleError::UnterminatedString { at });
        };
        let body = &rest[..end];
        check_legal(body, body_at)?;
        Ok((Tok::Str(body.replace('\r', "")), end + 2))
    }

    /// A double-quoted string with Go's escapes (`strconv.Unquote`). `\x` and octal escapes
    /// produce raw bytes in Go; a result that is not UTF-8 cannot be represented in the compiled
    /// tree and is rejected (Traefik would accept it).
    fn interpreted_string(&self, at: usize) -> Result<(Tok, usize), RuleError> {
        let bytes = self.src.as_bytes();
        let mut out = Vec::new();
        let mut i = at + 1;
        loop {
            match bytes.get(i) {
                None | Some(b'\n') => return Err(RuleError::UnterminatedString { at }),
                Some(b'"') => break,
                Some(b'\\') => i += unescape(bytes, i, &mut out)?,
                Some(0) => return Err(illegal('\0', i)),
                Some(&b) => {
                    if bytes[i..].starts_with("\u{feff}".as_bytes()) {
                        return Err(illegal('\u{feff}', i));
                    }
                    out.push(b);
                    i += 1;
                }
            }
        }
        let value = String::from_utf8(out).map_err(|_| RuleError::InvalidUtf8 { at })?;
        Ok((Tok::Str(value), i + 1 - at))
    }
}

/// Decodes the escape sequence starting with the backslash at `at`, appends its bytes to `out`
/// and returns its length. Same set as Go's double-quoted strings: `\'` is not one of them.
fn unescape(bytes: &[u8], at: usize, out: &mut Vec<u8>) -> Result<usize, RuleError> {
    let fail = |reason| RuleError::InvalidEscape { at, reason };
    let Some(&c) = bytes.get(at + 1) else {
        return Err(fail("escape sequence not terminated"));
    };
    let simple = match c {
        b'a' => Some(0x07),
        b'b' => Some(0x08),
        b'f' => Some(0x0c),
        b'n' => Some(b'\n'),
        b'r' => Some(b'\r'),
        b't' => Some(b'\t'),
        b'v' => Some(0x0b),
        b'\\' | b'"' => Some(c),
        _ => None,
    };
    if let Some(b) = simple {
        out.push(b);
        return Ok(2);
    }
    let (first, count, radix) = match c {
        b'0'..=b'7' => (at + 1, 3, 8),
        b'x' => (at + 2, 2, 16),
        b'u' => (at + 2, 4, 16),
        b'U' => (at + 2, 8, 16),
        _ => return Err(fail("unknown escape sequence")),
    };
    let Some(digits) = bytes.get(first..first + count) else {
        return Err(fail("escape sequence not terminated"));
    };
    let mut value: u32 = 0;
    for &d in digits {
        let Some(d) = char::from(d).to_digit(radix) else {
            return Err(fail("invalid digit in escape sequence"));
        };
        // At most 8 hex digits: cannot overflow a u32.
        value = value * radix + d;
    }
    if c == b'u' || c == b'U' {
        // Surrogates and values past U+10FFFF are rejected, as by Go's `utf8.ValidRune`.
        let ch = char::from_u32(value)
            .ok_or_else(|| fail("escape sequence is not a valid unicode code point"))?;
        out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
    } else {
        out.push(u8::try_from(value).map_err(|_| fail("octal escape value above 255"))?);
    }
    Ok(first + count - at)
}

fn is_word_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Go's scanner rejects NUL and a byte-order mark anywhere, even inside strings and comments.
fn check_legal(text: &str, base: usize) -> Result<(), RuleError> {
    match text
        .char_indices()
        .find(|&(_, c)| c == '\0' || c == '\u{feff}')
    {
        Some((i, c)) => Err(illegal(c, base + i)),
        None => Ok(()),
    }
}

fn illegal(c: char, at: usize) -> RuleError {
    RuleError::IllegalChar {
        found: describe_char(c),
        at,
    }
}

fn describe_char(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

/// A token as shown in an error: quoted, cut short, an invisible character by code point.
fn describe(text: &str) -> String {
    const MAX_CHARS: usize = 32;
    let mut chars = text.chars();
    if let (Some(c), None) = (chars.next(), chars.next())
        && (c.is_control() || c.is_whitespace() || c == '\u{feff}')
    {
        return describe_char(c);
    }
    let text = match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    };
    // A raw string shows as `` `a` ``, the way Markdown quotes a backtick.
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

// ---------------------------------------------------------------------------------------------
// Parser: Go precedence, `!` > `&&` > `||`.
//
//   any   := all ( "||" all )*
//   all   := unary ( "&&" unary )*
//   unary := "!" unary | "(" any ")" | NAME "(" [ STRING ( "," STRING )* [ "..." ] [ "," ] ] ")"

struct Parser<'a> {
    lexer: Lexer<'a>,
    /// The current (not yet consumed) token.
    tok: Token<'a>,
    depth: usize,
}

impl<'a> Parser<'a> {
    /// Consumes the current token and returns it.
    fn bump(&mut self) -> Result<Token<'a>, RuleError> {
        let next = self.lexer.next_token()?;
        Ok(std::mem::replace(&mut self.tok, next))
    }

    fn unexpected(&self, expected: &'static str) -> RuleError {
        match self.tok.tok {
            Tok::Eof => RuleError::UnexpectedEnd {
                at: self.tok.at,
                expected,
            },
            _ => RuleError::UnexpectedToken {
                found: describe(self.tok.text),
                at: self.tok.at,
                expected,
            },
        }
    }

    fn any(&mut self) -> Result<Expr, RuleError> {
        self.run(&Tok::Or, Self::all)
    }

    fn all(&mut self) -> Result<Expr, RuleError> {
        self.run(&Tok::And, Self::unary)
    }

    /// `item ( op item )*`, flattening items that are themselves runs of the same operator.
    fn run(
        &mut self,
        op: &Tok,
        item: fn(&mut Self) -> Result<Expr, RuleError>,
    ) -> Result<Expr, RuleError> {
        let first = item(self)?;
        if self.tok.tok != *op {
            return Ok(first);
        }
        let mut items = Vec::new();
        let mut next = first;
        loop {
            match (next, op) {
                (Expr::Any(inner), Tok::Or) | (Expr::All(inner), Tok::And) => items.extend(inner),
                (other, _) => items.push(other),
            }
            if self.tok.tok != *op {
                break;
            }
            self.bump()?;
            next = item(self)?;
        }
        Ok(if *op == Tok::Or {
            Expr::Any(items)
        } else {
            Expr::All(items)
        })
    }

    fn unary(&mut self) -> Result<Expr, RuleError> {
        match self.tok.tok {
            Tok::Not => {
                self.descend()?;
                self.bump()?;
                let inner = self.unary()?;
                self.depth -= 1;
                Ok(Expr::Not(Box::new(inner)))
            }
            Tok::LParen => {
                let open = self.tok.at;
                self.descend()?;
                self.bump()?;
                let inner = self.any()?;
                match self.tok.tok {
                    Tok::RParen => {}
                    Tok::Eof => return Err(RuleError::UnclosedParen { at: open }),
                    _ => return Err(self.unexpected("`&&`, `||` or `)`")),
                }
                self.bump()?;
                self.depth -= 1;
                Ok(inner)
            }
            Tok::Word => self.matcher(),
            _ => Err(self.unexpected("a matcher, `!` or `(`")),
        }
    }

    fn descend(&mut self) -> Result<(), RuleError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(RuleError::TooDeep { at: self.tok.at });
        }
        Ok(())
    }

    fn matcher(&mut self) -> Result<Expr, RuleError> {
        let (name, at) = (self.tok.text, self.tok.at);
        let (canonical, kind) = lookup(name).ok_or_else(|| RuleError::UnknownMatcher {
            name: name.to_owned(),
            at,
            suggestion: suggest(name),
        })?;
        self.bump()?;
        if self.tok.tok != Tok::LParen {
            return Err(self.unexpected("`(` after the matcher name"));
        }
        self.bump()?;
        let mut args = Vec::new();
        while self.tok.tok != Tok::RParen {
            if !matches!(self.tok.tok, Tok::Str(_)) {
                return Err(self.unexpected("a quoted argument or `)`"));
            }
            if let Tok::Str(arg) = self.bump()?.tok {
                args.push(arg);
            }
            match self.tok.tok {
                Tok::Comma => {
                    self.bump()?;
                }
                // Go's `f(a...)`: predicate ignores the ellipsis, so Traefik reads `f(a)`.
                Tok::Ellipsis => {
                    self.bump()?;
                    if self.tok.tok == Tok::Comma {
                        self.bump()?;
                    }
                    if self.tok.tok != Tok::RParen {
                        return Err(self.unexpected("`)`"));
                    }
                }
                Tok::RParen => {}
                _ => return Err(self.unexpected("`,` or `)`")),
            }
        }
        // Validate before moving past `)`, so errors come in the order they appear in the text.
        let matcher = build(canonical, kind, args)?;
        self.bump()?;
        Ok(Expr::Matcher(matcher))
    }
}

// ---------------------------------------------------------------------------------------------
// Matchers

#[derive(Clone, Copy)]
enum Kind {
    Host,
    HostRegexp,
    Path,
    PathPrefix,
    PathRegexp,
    Method,
    Header,
    HeaderRegexp,
    Query,
    QueryRegexp,
    ClientIp,
}

/// The v3 HTTP matchers (`pkg/muxer/http/matcher.go` `httpFuncs`), by documented name.
const MATCHERS: [(&str, Kind); 11] = [
    ("Host", Kind::Host),
    ("HostRegexp", Kind::HostRegexp),
    ("Path", Kind::Path),
    ("PathPrefix", Kind::PathPrefix),
    ("PathRegexp", Kind::PathRegexp),
    ("Method", Kind::Method),
    ("Header", Kind::Header),
    ("HeaderRegexp", Kind::HeaderRegexp),
    ("Query", Kind::Query),
    ("QueryRegexp", Kind::QueryRegexp),
    ("ClientIP", Kind::ClientIp),
];

/// Traefik registers each matcher under exactly four spellings (`pkg/rules/parser.go`): as
/// documented, lower case, upper case, and the lower case with a capital first letter
/// (`Pathprefix`, `Clientip`). `pathPrefix` and `ClientIp` are unknown functions to it.
fn lookup(name: &str) -> Option<(&'static str, Kind)> {
    MATCHERS.iter().copied().find(|&(canonical, _)| {
        let lower = canonical.to_ascii_lowercase();
        let mut title = lower.clone();
        title[..1].make_ascii_uppercase();
        name == canonical
            || name == lower
            || name == title
            || name == canonical.to_ascii_uppercase()
    })
}

/// A hint for an unknown name: another capitalisation, or a v2 matcher renamed in v3
/// (`docs/content/migrate/v2-to-v3-details.md`).
fn suggest(name: &str) -> Option<&'static str> {
    if let Some(&(canonical, _)) = MATCHERS.iter().find(|(c, _)| c.eq_ignore_ascii_case(name)) {
        return Some(canonical);
    }
    match name.to_ascii_lowercase().as_str() {
        "headers" => Some("Header"),
        "headersregexp" => Some("HeaderRegexp"),
        "hostheader" => Some("Host"),
        _ => None,
    }
}

/// Checks the arguments and builds the matcher, in Traefik's order: at least one argument and
/// none empty (`rules.CheckRule`), then the count (`expectNParameters`), then the value.
fn build(name: &'static str, kind: Kind, args: Vec<String>) -> Result<Matcher, RuleError> {
    let (min, max, expected) = match kind {
        Kind::Header | Kind::HeaderRegexp => (2, 2, "2"),
        Kind::Query | Kind::QueryRegexp => (1, 2, "1 or 2"),
        _ => (1, 1, "1"),
    };
    let arity = RuleError::Arity {
        matcher: name,
        got: args.len(),
        expected,
    };
    if args.is_empty() {
        return Err(arity);
    }
    if args.iter().any(String::is_empty) {
        return Err(RuleError::EmptyArgument { matcher: name });
    }
    if !(min..=max).contains(&args.len()) {
        return Err(arity);
    }
    let mut args = args.into_iter();
    let first = args.next().unwrap_or_default();
    let second = args.next();
    Ok(match kind {
        Kind::Host => Matcher::Host(host(first)?),
        Kind::HostRegexp => {
            if !first.is_ascii() {
                return Err(non_ascii(name, first));
            }
            Matcher::HostRegexp(regex(name, first)?)
        }
        Kind::Path => Matcher::Path(path(name, first)?),
        Kind::PathPrefix => Matcher::PathPrefix(path(name, first)?),
        // Unlike Path, PathRegexp need not start with `/`.
        Kind::PathRegexp => Matcher::PathRegexp(regex(name, first)?),
        Kind::Method => Matcher::Method(first.to_uppercase()),
        Kind::Header => Matcher::Header(Box::new((
            canonical_header_key(first),
            second.unwrap_or_default(),
        ))),
        Kind::HeaderRegexp => Matcher::HeaderRegexp(Box::new((
            canonical_header_key(first),
            regex(name, second.unwrap_or_default())?,
        ))),
        Kind::Query => Matcher::Query(Box::new((first, second))),
        Kind::QueryRegexp => Matcher::QueryRegexp(Box::new((
            first,
            second.map(|re| regex(name, re)).transpose()?,
        ))),
        Kind::ClientIp => Matcher::ClientIp(client_ip(first)?),
    })
}

fn non_ascii(matcher: &'static str, value: String) -> RuleError {
    RuleError::InvalidValue {
        matcher,
        value,
        reason: "non-ASCII characters are not allowed (use punycode)",
    }
}

/// Traefik lower-cases the host and, when matching, ignores one trailing dot on either side; we
/// drop it here so the proxy compares plain names. A port (`a.example:8080`) is kept: it is
/// valid but never matches, since the request host is compared without its port.
fn host(value: String) -> Result<String, RuleError> {
    // ``Host(`*`)`` matches every request (v3.7.7+); Traefik tests it before the ASCII check.
    if value == "*" {
        return Ok(value);
    }
    if !value.is_ascii() {
        return Err(non_ascii("Host", value));
    }
    let mut host = value.to_ascii_lowercase();
    // Not for `.` (would become empty) nor `*.`: in Traefik `*.` matches one-label hosts only,
    // while `*` would match everything.
    if host.ends_with('.') && host.len() > 1 && host != "*." {
        host.pop();
    }
    Ok(host)
}

fn path(matcher: &'static str, value: String) -> Result<String, RuleError> {
    if !value.starts_with('/') {
        return Err(RuleError::InvalidValue {
            matcher,
            value,
            reason: "must start with `/`",
        });
    }
    Ok(value)
}

/// Traefik compiles with Go's RE2 (`regexp.Compile`); the `regex` crate has the same design (no
/// look-around, no back-references), so a pattern accepted here is one the proxy can build.
fn regex(matcher: &'static str, regex: String) -> Result<String, RuleError> {
    match Regex::new(&regex) {
        Ok(_) => Ok(regex),
        Err(e) => Err(RuleError::InvalidRegex {
            matcher,
            reason: regex_reason(&e),
            regex,
        }),
    }
}

/// A syntax error renders as several lines (pattern, caret, `error: …`); keep the last.
fn regex_reason(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .rev()
        .find_map(|line| line.strip_prefix("error: "))
        .map_or_else(|| text.replace('\n', " "), str::to_owned)
}

/// Go's `http.CanonicalHeaderKey`: upper-case the first letter and every letter after `-`,
/// lower-case the rest; a key with any byte that is not an RFC 7230 token character (a space,
/// non-ASCII…) is returned unchanged.
fn canonical_header_key(key: String) -> String {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !key.bytes().all(token) {
        return key;
    }
    let mut upper = true;
    key.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// Traefik (`pkg/ip/checker.go`) takes `net.ParseIP`, else `net.ParseCIDR`. The address part is
/// read by std, which is as strict as Go (no leading zeros in IPv4 octets, no zone); ipnet alone
/// would take `00.0.0.0/8`. Go allows leading zeros in the prefix length (`10.0.0.0/008`), ipnet
/// does not: such values are stored in canonical form so the proxy can read them back.
fn client_ip(value: String) -> Result<String, RuleError> {
    if value.parse::<IpAddr>().is_ok() {
        return Ok(value);
    }
    if let Some((addr, len)) = value.split_once('/')
        && let Ok(addr) = addr.parse::<IpAddr>()
        // Digits only: Rust's integer parsing would also take a `+` sign.
        && !len.is_empty()
        && len.bytes().all(|b| b.is_ascii_digit())
        && let Ok(len) = len.parse::<u8>()
        && let Ok(net) = IpNet::new(addr, len)
    {
        return Ok(if value.parse::<IpNet>() == Ok(net) {
            value
        } else {
            net.to_string()
        });
    }
    Err(RuleError::InvalidValue {
        matcher: "ClientIP",
        value,
        reason: "not an IP address or CIDR",
    })
}

#[cfg(test)]
mod tests;
