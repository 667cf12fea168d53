use switchyard_shared::rule::{Expr, Matcher};

use super::{RuleError, parse_rule};

/// Parses `rule` and renders the tree with `Expr`'s canonical `Display`.
fn show(rule: &str) -> String {
    match parse_rule(rule) {
        Ok(expr) => expr.to_string(),
        Err(e) => panic!("{rule:?} was rejected: {e}"),
    }
}

fn error(rule: &str) -> RuleError {
    match parse_rule(rule) {
        Ok(expr) => panic!("{rule:?} was accepted as {expr}"),
        Err(e) => e,
    }
}

fn accepts(cases: &[(&str, &str)]) {
    for (rule, want) in cases {
        assert_eq!(show(rule), *want, "rule {rule:?}");
    }
}

/// Each rule must be rejected with exactly this message.
fn rejects(cases: &[(&str, &str)]) {
    for (rule, want) in cases {
        assert_eq!(error(rule).to_string(), *want, "rule {rule:?}");
    }
}

fn m(matcher: Matcher) -> Expr {
    Expr::Matcher(matcher)
}

#[test]
fn every_matcher_parses() {
    let cases = [
        ("Host(`a.example`)", m(Matcher::Host("a.example".into()))),
        (
            "HostRegexp(`^[a-z]+\\.example$`)",
            m(Matcher::HostRegexp("^[a-z]+\\.example$".into())),
        ),
        ("Path(`/a`)", m(Matcher::Path("/a".into()))),
        ("PathPrefix(`/a`)", m(Matcher::PathPrefix("/a".into()))),
        (
            "PathRegexp(`^/a/[0-9]+$`)",
            m(Matcher::PathRegexp("^/a/[0-9]+$".into())),
        ),
        ("Method(`POST`)", m(Matcher::Method("POST".into()))),
        (
            "Header(`X-A`, `1`)",
            m(Matcher::Header(Box::new(("X-A".into(), "1".into())))),
        ),
        (
            "HeaderRegexp(`X-A`, `^1`)",
            m(Matcher::HeaderRegexp(Box::new(("X-A".into(), "^1".into())))),
        ),
        (
            "Query(`k`)",
            m(Matcher::Query(Box::new(("k".into(), None)))),
        ),
        (
            "Query(`k`, `v`)",
            m(Matcher::Query(Box::new(("k".into(), Some("v".into()))))),
        ),
        (
            "QueryRegexp(`k`)",
            m(Matcher::QueryRegexp(Box::new(("k".into(), None)))),
        ),
        (
            "QueryRegexp(`k`, `^v`)",
            m(Matcher::QueryRegexp(Box::new((
                "k".into(),
                Some("^v".into()),
            )))),
        ),
        (
            "ClientIP(`10.0.0.1`)",
            m(Matcher::ClientIp("10.0.0.1".into())),
        ),
        (
            "ClientIP(`10.0.0.0/8`)",
            m(Matcher::ClientIp("10.0.0.0/8".into())),
        ),
        ("ClientIP(`::1`)", m(Matcher::ClientIp("::1".into()))),
        (
            "ClientIP(`2001:db8::/32`)",
            m(Matcher::ClientIp("2001:db8::/32".into())),
        ),
    ];
    for (rule, want) in cases {
        assert_eq!(parse_rule(rule), Ok(want), "rule {rule:?}");
    }
}

#[test]
fn operators_build_the_tree() {
    let host = || m(Matcher::Host("a".into()));
    let path = || m(Matcher::Path("/".into()));
    let cases = [
        ("Host(`a`) && Path(`/`)", Expr::All(vec![host(), path()])),
        ("Host(`a`) || Path(`/`)", Expr::Any(vec![host(), path()])),
        ("!Host(`a`)", Expr::Not(Box::new(host()))),
        (
            "!!Host(`a`)",
            Expr::Not(Box::new(Expr::Not(Box::new(host())))),
        ),
    ];
    for (rule, want) in cases {
        assert_eq!(parse_rule(rule), Ok(want), "rule {rule:?}");
    }
}

#[test]
fn and_binds_tighter_than_or() {
    accepts(&[
        (
            "Host(`a`) || Path(`/b`) && Method(`GET`)",
            "(Host(`a`) || (Path(`/b`) && Method(`GET`)))",
        ),
        (
            "Host(`a`) && Path(`/b`) || Method(`GET`)",
            "((Host(`a`) && Path(`/b`)) || Method(`GET`))",
        ),
        (
            "(Host(`a`) || Path(`/b`)) && Method(`GET`)",
            "((Host(`a`) || Path(`/b`)) && Method(`GET`))",
        ),
    ]);
}

#[test]
fn not_binds_tightest() {
    accepts(&[
        ("!Host(`a`) && Path(`/b`)", "(!Host(`a`) && Path(`/b`))"),
        ("!Host(`a`) || Path(`/b`)", "(!Host(`a`) || Path(`/b`))"),
        ("Host(`a`) && !Path(`/b`)", "(Host(`a`) && !Path(`/b`))"),
    ]);
}

#[test]
fn not_applies_to_groups() {
    accepts(&[
        ("!(Host(`a`) || Path(`/b`))", "!(Host(`a`) || Path(`/b`))"),
        (
            "!(Host(`a`) && Path(`/b`)) && Method(`GET`)",
            "(!(Host(`a`) && Path(`/b`)) && Method(`GET`))",
        ),
        ("!(Host(`a`))", "!Host(`a`)"),
        ("! ( Host(`a`) )", "!Host(`a`)"),
    ]);
}

#[test]
fn same_operators_flatten() {
    accepts(&[
        (
            "Host(`a`) && (Path(`/b`) && Method(`GET`))",
            "(Host(`a`) && Path(`/b`) && Method(`GET`))",
        ),
        (
            "(Host(`a`) && Path(`/b`)) && Method(`GET`)",
            "(Host(`a`) && Path(`/b`) && Method(`GET`))",
        ),
        (
            "Host(`a`) || (Path(`/b`) || (Method(`GET`) || Query(`q`)))",
            "(Host(`a`) || Path(`/b`) || Method(`GET`) || Query(`q`))",
        ),
        // Different operators nest; `!` stops flattening.
        (
            "Host(`a`) && (Path(`/b`) || Method(`GET`))",
            "(Host(`a`) && (Path(`/b`) || Method(`GET`)))",
        ),
        (
            "Host(`a`) && !(Path(`/b`) && Method(`GET`))",
            "(Host(`a`) && !(Path(`/b`) && Method(`GET`)))",
        ),
    ]);
}

#[test]
fn single_item_group_is_the_item() {
    accepts(&[
        ("(Host(`a`))", "Host(`a`)"),
        ("(((Host(`a`))))", "Host(`a`)"),
        ("((Host(`a`)) && ((Path(`/`))))", "(Host(`a`) && Path(`/`))"),
    ]);
}

#[test]
fn names_accept_four_spellings() {
    let matchers = [
        ("Host", "(`a`)"),
        ("HostRegexp", "(`a`)"),
        ("Path", "(`/a`)"),
        ("PathPrefix", "(`/a`)"),
        ("PathRegexp", "(`a`)"),
        ("Method", "(`GET`)"),
        ("Header", "(`X-A`, `a`)"),
        ("HeaderRegexp", "(`X-A`, `a`)"),
        ("Query", "(`a`, `a`)"),
        ("QueryRegexp", "(`a`, `a`)"),
        ("ClientIP", "(`1.2.3.4`)"),
    ];
    for (name, args) in matchers {
        let want = format!("{name}{args}");
        let lower = name.to_ascii_lowercase();
        // `Pathprefix`, `Clientip`: Traefik title-cases the lower-case name.
        let title = format!("{}{}", &name[..1], &lower[1..]);
        for spelling in [
            name.to_owned(),
            name.to_ascii_uppercase(),
            lower.clone(),
            title,
        ] {
            assert_eq!(
                show(&format!("{spelling}{args}")),
                want,
                "spelling {spelling}"
            );
        }
    }
}

#[test]
fn other_spellings_are_unknown() {
    rejects(&[
        (
            "ClientIp(`1.2.3.4`)",
            "unknown matcher `ClientIp` at 0; did you mean `ClientIP`?",
        ),
        (
            "pathPrefix(`/`)",
            "unknown matcher `pathPrefix` at 0; did you mean `PathPrefix`?",
        ),
        (
            "HOSTregexp(`a`)",
            "unknown matcher `HOSTregexp` at 0; did you mean `HostRegexp`?",
        ),
        (
            "hOST(`a`)",
            "unknown matcher `hOST` at 0; did you mean `Host`?",
        ),
    ]);
}

#[test]
fn unknown_matchers_are_rejected() {
    rejects(&[
        ("Hots(`a`)", "unknown matcher `Hots` at 0"),
        (
            "Host(`a`) && HostSNI(`a`)",
            "unknown matcher `HostSNI` at 13",
        ),
        (
            "Headers(`a`, `b`)",
            "unknown matcher `Headers` at 0; did you mean `Header`?",
        ),
        (
            "HeadersRegexp(`a`, `b`)",
            "unknown matcher `HeadersRegexp` at 0; did you mean `HeaderRegexp`?",
        ),
        (
            "HostHeader(`a`)",
            "unknown matcher `HostHeader` at 0; did you mean `Host`?",
        ),
        ("Hôst(`a`)", "unknown matcher `Hôst` at 0"),
    ]);
}

#[test]
fn raw_strings_have_no_escapes() {
    accepts(&[
        (r"Path(`/a\nb`)", r"Path(`/a\nb`)"),
        (r"HostRegexp(`^a\.b$`)", r"HostRegexp(`^a\.b$`)"),
        ("Path(`/a\"b`)", "Path(`/a\"b`)"),
        // Go drops carriage returns from raw strings; a newline is kept.
        ("Path(`/a\r\nb`)", "Path(`/a\nb`)"),
    ]);
}

#[test]
fn double_quoted_strings_unescape_like_go() {
    let cases = [
        (r#"Path("/a")"#, "/a"),
        (r#"Path("/a\"b")"#, "/a\"b"),
        (r#"Path("/a\\b")"#, "/a\\b"),
        (r#"Path("/\a\b\f\n\r\t\v")"#, "/\x07\x08\x0c\n\r\t\x0b"),
        (r#"Path("/\x41\x7a")"#, "/Az"),
        (r#"Path("/\101\172")"#, "/Az"),
        (r#"Path("/\u00e9\U0001F600")"#, "/é😀"),
        // Two escaped bytes that together form valid UTF-8.
        (r#"Path("/\xc3\xa9")"#, "/é"),
        (r#"Path("/`")"#, "/`"),
        ("Path(\"/a\tb\")", "/a\tb"),
    ];
    for (rule, want) in cases {
        assert_eq!(
            parse_rule(rule),
            Ok(m(Matcher::Path(want.into()))),
            "rule {rule:?}"
        );
    }
    // Regex escapes need the backslash doubled inside double quotes.
    assert_eq!(show(r#"PathRegexp("^/a\\.b$")"#), r"PathRegexp(`^/a\.b$`)");
}

#[test]
fn invalid_escapes_are_rejected() {
    rejects(&[
        (
            r#"Path("/\q")"#,
            "invalid escape sequence at 7: unknown escape sequence",
        ),
        // `\'` is valid in Go rune literals only.
        (
            r#"Path("/\'")"#,
            "invalid escape sequence at 7: unknown escape sequence",
        ),
        (
            r#"Path("/\.")"#,
            "invalid escape sequence at 7: unknown escape sequence",
        ),
        (
            r#"Path("/\x4")"#,
            "invalid escape sequence at 7: invalid digit in escape sequence",
        ),
        (
            r#"Path("/\xzz")"#,
            "invalid escape sequence at 7: invalid digit in escape sequence",
        ),
        (
            r#"Path("/\400")"#,
            "invalid escape sequence at 7: octal escape value above 255",
        ),
        (
            r#"Path("/\19")"#,
            "invalid escape sequence at 7: invalid digit in escape sequence",
        ),
        (
            r#"Path("/\ud800")"#,
            "invalid escape sequence at 7: escape sequence is not a valid unicode code point",
        ),
        (
            r#"Path("/\U00110000")"#,
            "invalid escape sequence at 7: escape sequence is not a valid unicode code point",
        ),
        (
            r#"Path("/\u12")"#,
            "invalid escape sequence at 7: invalid digit in escape sequence",
        ),
        (
            r#"Path("/\"#,
            "invalid escape sequence at 7: escape sequence not terminated",
        ),
        (
            r#"Path("/\u1"#,
            "invalid escape sequence at 7: escape sequence not terminated",
        ),
        // Go accepts a lone `\xff` (strings are bytes); our tree holds UTF-8 text.
        (
            r#"Path("/\xff")"#,
            "string at 5 is not valid utf-8 once unescaped",
        ),
    ]);
}

#[test]
fn single_quotes_are_rejected() {
    rejects(&[
        (
            "Host('a')",
            "single-quoted strings are not allowed at 5; use backticks or double quotes",
        ),
        (
            "Host(`a`) && Path('/')",
            "single-quoted strings are not allowed at 18; use backticks or double quotes",
        ),
    ]);
}

#[test]
fn unterminated_strings_and_comments_are_rejected() {
    rejects(&[
        ("Host(`a)", "unterminated string at 5"),
        ("Host(\"a)", "unterminated string at 5"),
        // A double-quoted string cannot span lines; a raw one can.
        ("Host(\"a\nb\")", "unterminated string at 5"),
        ("Host(`a`) /* x", "unterminated comment at 10"),
    ]);
    assert_eq!(show("Path(`/a\nb`)"), "Path(`/a\nb`)");
}

#[test]
fn empty_argument_is_rejected() {
    rejects(&[
        ("Host(``)", "empty argument in Host"),
        ("Path(\"\")", "empty argument in Path"),
        ("Header(`X-A`, ``)", "empty argument in Header"),
        ("Query(``, `v`)", "empty argument in Query"),
        // Traefik checks for empty arguments before counting them.
        ("Host(``, `b`)", "empty argument in Host"),
    ]);
    // A blank argument is not empty: it is kept and never matches.
    assert_eq!(show("Query(`k`, ` `)"), "Query(`k`, ` `)");
}

#[test]
fn wrong_arity_is_rejected_for_every_matcher() {
    rejects(&[
        (
            "Host()",
            "Host: unexpected number of arguments; got 0, expected 1",
        ),
        (
            "Host(`a`, `b`)",
            "Host: unexpected number of arguments; got 2, expected 1",
        ),
        (
            "HostRegexp(`a`, `b`)",
            "HostRegexp: unexpected number of arguments; got 2, expected 1",
        ),
        (
            "Path(`/a`, `/b`)",
            "Path: unexpected number of arguments; got 2, expected 1",
        ),
        (
            "PathPrefix()",
            "PathPrefix: unexpected number of arguments; got 0, expected 1",
        ),
        (
            "PathPrefix(`/a`, `/b`)",
            "PathPrefix: unexpected number of arguments; got 2, expected 1",
        ),
        (
            "PathRegexp(`a`, `b`)",
            "PathRegexp: unexpected number of arguments; got 2, expected 1",
        ),
        (
            "Method(`GET`, `POST`)",
            "Method: unexpected number of arguments; got 2, expected 1",
        ),
        (
            "Header(`X-A`)",
            "Header: unexpected number of arguments; got 1, expected 2",
        ),
        (
            "Header(`a`, `b`, `c`)",
            "Header: unexpected number of arguments; got 3, expected 2",
        ),
        (
            "HeaderRegexp(`X-A`)",
            "HeaderRegexp: unexpected number of arguments; got 1, expected 2",
        ),
        (
            "Query()",
            "Query: unexpected number of arguments; got 0, expected 1 or 2",
        ),
        (
            "Query(`a`, `b`, `c`)",
            "Query: unexpected number of arguments; got 3, expected 1 or 2",
        ),
        (
            "QueryRegexp(`a`, `b`, `c`)",
            "QueryRegexp: unexpected number of arguments; got 3, expected 1 or 2",
        ),
        (
            "ClientIP(`1.2.3.4`, `::1`)",
            "ClientIP: unexpected number of arguments; got 2, expected 1",
        ),
        // Arity uses the documented name whatever the spelling.
        (
            "host(`a`, `b`)",
            "Host: unexpected number of arguments; got 2, expected 1",
        ),
    ]);
}

#[test]
fn unbalanced_parens_are_rejected() {
    rejects(&[
        ("(Host(`a`)", "unclosed `(` at 0"),
        ("((Host(`a`))", "unclosed `(` at 0"),
        (
            "Host(`a`))",
            "unexpected token `)` at 9; expected `&&`, `||` or the end of the rule",
        ),
        (
            "Host(`a`",
            "unexpected end of rule at 8; expected `,` or `)`",
        ),
        (
            "Host(",
            "unexpected end of rule at 5; expected a quoted argument or `)`",
        ),
        (
            ")",
            "unexpected token `)` at 0; expected a matcher, `!` or `(`",
        ),
        (
            "()",
            "unexpected token `)` at 1; expected a matcher, `!` or `(`",
        ),
        (
            "(Host(`a`) Path(`/`))",
            "unexpected token `Path` at 11; expected `&&`, `||` or `)`",
        ),
    ]);
}

#[test]
fn trailing_and_leading_operators_are_rejected() {
    rejects(&[
        (
            "Host(`a`) &&",
            "unexpected end of rule at 12; expected a matcher, `!` or `(`",
        ),
        (
            "Host(`a`) || ",
            "unexpected end of rule at 13; expected a matcher, `!` or `(`",
        ),
        (
            "Host(`a`) !",
            "unexpected token `!` at 10; expected `&&`, `||` or the end of the rule",
        ),
        (
            "!",
            "unexpected end of rule at 1; expected a matcher, `!` or `(`",
        ),
        (
            "&& Host(`a`)",
            "unexpected token `&&` at 0; expected a matcher, `!` or `(`",
        ),
        (
            "Host(`a`) && && Path(`/`)",
            "unexpected token `&&` at 13; expected a matcher, `!` or `(`",
        ),
        (
            "Host(`a`) && || Path(`/`)",
            "unexpected token `||` at 13; expected a matcher, `!` or `(`",
        ),
    ]);
}

#[test]
fn missing_operator_is_rejected() {
    rejects(&[
        (
            "Host(`a`) Path(`/`)",
            "unexpected token `Path` at 10; expected `&&`, `||` or the end of the rule",
        ),
        (
            "Host(`a`)Path(`/`)",
            "unexpected token `Path` at 9; expected `&&`, `||` or the end of the rule",
        ),
        (
            "Host(`a`) (Path(`/`))",
            "unexpected token `(` at 10; expected `&&`, `||` or the end of the rule",
        ),
    ]);
}

#[test]
fn other_go_operators_are_rejected() {
    rejects(&[
        (
            "Host(`a`) & Path(`/`)",
            "unexpected token `&` at 10; expected `&&`, `||` or the end of the rule",
        ),
        (
            "Host(`a`) | Path(`/`)",
            "unexpected token `|` at 10; expected `&&`, `||` or the end of the rule",
        ),
        (
            "Host(`a`) == Path(`/`)",
            "unexpected token `=` at 10; expected `&&`, `||` or the end of the rule",
        ),
        (
            "Host(`a`);",
            "unexpected token `;` at 9; expected `&&`, `||` or the end of the rule",
        ),
        (
            "-Host(`a`)",
            "unexpected token `-` at 0; expected a matcher, `!` or `(`",
        ),
        // Go would read a selector call; `x` is simply not a matcher.
        ("x.Host(`a`)", "unknown matcher `x` at 0"),
    ]);
}

#[test]
fn arguments_must_be_string_literals() {
    rejects(&[
        (
            "Host(a)",
            "unexpected token `a` at 5; expected a quoted argument or `)`",
        ),
        (
            "Host(1)",
            "unexpected token `1` at 5; expected a quoted argument or `)`",
        ),
        (
            "Host((`a`))",
            "unexpected token `(` at 5; expected a quoted argument or `)`",
        ),
        (
            "Host(Path(`/`))",
            "unexpected token `Path` at 5; expected a quoted argument or `)`",
        ),
        (
            "Host(`a` `b`)",
            "unexpected token `` `b` `` at 9; expected `,` or `)`",
        ),
        (
            "Host(,)",
            "unexpected token `,` at 5; expected a quoted argument or `)`",
        ),
        (
            "Host(`a`,,)",
            "unexpected token `,` at 9; expected a quoted argument or `)`",
        ),
        (
            "Host",
            "unexpected end of rule at 4; expected `(` after the matcher name",
        ),
        (
            "Host && Path(`/`)",
            "unexpected token `&&` at 5; expected `(` after the matcher name",
        ),
        (
            "`a`",
            "unexpected token `` `a` `` at 0; expected a matcher, `!` or `(`",
        ),
    ]);
}

#[test]
fn empty_rule_is_rejected() {
    for rule in [
        "",
        " ",
        "\t\r\n ",
        "// nothing",
        "/* nothing */",
        "\u{feff}",
    ] {
        assert_eq!(error(rule), RuleError::Empty, "rule {rule:?}");
    }
}

#[test]
fn whitespace_between_tokens_is_ignored() {
    accepts(&[
        (" Host ( `a` ) ", "Host(`a`)"),
        ("\tHost(`a`)\t&&\tPath(`/`)\t", "(Host(`a`) && Path(`/`))"),
        (
            "Host(`a`)&&Path(`/`)||!Method(`GET`)",
            "((Host(`a`) && Path(`/`)) || !Method(`GET`))",
        ),
        ("Header( `X-A` , `1` )", "Header(`X-A`, `1`)"),
        ("\r\nHost(`a`)\r\n", "Host(`a`)"),
    ]);
}

#[test]
fn line_break_after_operator_is_allowed() {
    accepts(&[
        ("Host(`a`) &&\n  Path(`/`)", "(Host(`a`) && Path(`/`))"),
        ("Host(`a`) ||\n\n!Path(`/`)", "(Host(`a`) || !Path(`/`))"),
        (
            "(\n  Host(`a`) &&\n  Path(`/`))",
            "(Host(`a`) && Path(`/`))",
        ),
        ("Header(\n  `X-A`,\n  `1`,\n)", "Header(`X-A`, `1`)"),
        ("!\nHost(`a`)", "!Host(`a`)"),
        ("\n\nHost(`a`)\n\n", "Host(`a`)"),
    ]);
}

#[test]
fn line_break_before_operator_ends_the_rule() {
    // Go inserts `;` at a line break after an identifier, a string or `)`; Traefik 3.7.15 then
    // fails with "expected 'EOF', found '&&'".
    let hint = "ends the rule (Traefik reads rules as Go expressions); break lines after `&&`, `||`, `(` or `,` instead";
    let cases = [
        ("Host(`a`)\n&& Path(`/`)", "`&&` at 10"),
        ("Host(`a`)\n|| Path(`/`)", "`||` at 10"),
        ("Host\n(`a`)", "`(` at 5"),
        ("Host(\n`a`\n)", "`)` at 10"),
        ("(Host(`a`)\n)", "`)` at 11"),
        ("Host(`a`) // note\n&& Path(`/`)", "`&&` at 18"),
        ("Host(`a`) /* a\nnote */ && Path(`/`)", "`&&` at 23"),
    ];
    for (rule, found) in cases {
        assert_eq!(
            error(rule).to_string(),
            format!("line break before {found} {hint}"),
            "rule {rule:?}"
        );
    }
}

#[test]
fn comments_are_ignored() {
    accepts(&[
        (
            "Host(`a`) /* web */ && Path(`/`)",
            "(Host(`a`) && Path(`/`))",
        ),
        ("Host(`a`) // trailing", "Host(`a`)"),
        ("// first line\nHost(`a`)", "Host(`a`)"),
        (
            "Host(`a`) &&  // why\n  Path(`/`)",
            "(Host(`a`) && Path(`/`))",
        ),
        ("Host(/* x */`a`/* y */)", "Host(`a`)"),
        // Comment markers inside strings are text.
        ("Path(`/a//b/*c*/`)", "Path(`/a//b/*c*/`)"),
    ]);
}

#[test]
fn trailing_comma_and_ellipsis_are_accepted() {
    accepts(&[
        ("Host(`a`,)", "Host(`a`)"),
        ("Header(`X-A`, `1`,)", "Header(`X-A`, `1`)"),
        ("Host(`a`...)", "Host(`a`)"),
        ("Host(`a`...,)", "Host(`a`)"),
        ("Query(`k`, `v`...)", "Query(`k`, `v`)"),
    ]);
    rejects(&[
        (
            "Host(`a`..., `b`)",
            "unexpected token `` `b` `` at 13; expected `)`",
        ),
        (
            "Host(`a`..)",
            "unexpected token `.` at 8; expected `,` or `)`",
        ),
    ]);
}

#[test]
fn host_is_normalised() {
    accepts(&[
        ("Host(`A.Example.COM`)", "Host(`a.example.com`)"),
        ("Host(`a.example.com.`)", "Host(`a.example.com`)"),
        ("Host(`A.EXAMPLE.`)", "Host(`a.example`)"),
        // One dot only.
        ("Host(`a.example..`)", "Host(`a.example.`)"),
        ("Host(`*.Example.com`)", "Host(`*.example.com`)"),
        ("Host(`*.example.com.`)", "Host(`*.example.com`)"),
        ("Host(`*`)", "Host(`*`)"),
        // `*.` matches one-label hosts in Traefik, `*` everything: not the same.
        ("Host(`*.`)", "Host(`*.`)"),
        ("Host(`.`)", "Host(`.`)"),
        // A port is allowed and kept; it never matches a request.
        ("Host(`a.example:8080`)", "Host(`a.example:8080`)"),
        ("Host(`[::1]:443`)", "Host(`[::1]:443`)"),
        ("Host(`localhost`)", "Host(`localhost`)"),
    ]);
}

#[test]
fn host_rejects_non_ascii() {
    rejects(&[
        (
            "Host(`bücher.example`)",
            r#"Host: invalid value "bücher.example": non-ASCII characters are not allowed (use punycode)"#,
        ),
        (
            "Host(\"\\u00e9.example\")",
            r#"Host: invalid value "é.example": non-ASCII characters are not allowed (use punycode)"#,
        ),
    ]);
    assert_eq!(
        show("Host(`xn--bcher-kva.example`)"),
        "Host(`xn--bcher-kva.example`)"
    );
}

#[test]
fn host_regexp_is_ascii_and_compiles() {
    accepts(&[
        // Kept as written: no lower-casing, no trailing-dot handling, not anchored.
        (
            "HostRegexp(`^[A-Z]+\\.example\\.$`)",
            "HostRegexp(`^[A-Z]+\\.example\\.$`)",
        ),
        ("HostRegexp(`(?i)example`)", "HostRegexp(`(?i)example`)"),
    ]);
    rejects(&[
        (
            "HostRegexp(`^é$`)",
            r#"HostRegexp: invalid value "^é$": non-ASCII characters are not allowed (use punycode)"#,
        ),
        (
            "HostRegexp(`^(a`)",
            "HostRegexp: invalid regular expression `^(a`: unclosed group",
        ),
    ]);
}

#[test]
fn paths_need_a_leading_slash() {
    rejects(&[
        (
            "Path(`a`)",
            r#"Path: invalid value "a": must start with `/`"#,
        ),
        (
            "PathPrefix(`api`)",
            r#"PathPrefix: invalid value "api": must start with `/`"#,
        ),
        (
            "Path(` /a`)",
            r#"Path: invalid value " /a": must start with `/`"#,
        ),
    ]);
    accepts(&[
        ("Path(`/`)", "Path(`/`)"),
        // Kept as written: no cleaning, no decoding, case kept.
        ("PathPrefix(`/API/v1/`)", "PathPrefix(`/API/v1/`)"),
        ("Path(`/a%2Fb`)", "Path(`/a%2Fb`)"),
        // PathRegexp need not start with a slash.
        ("PathRegexp(`\\.css$`)", "PathRegexp(`\\.css$`)"),
    ]);
}

#[test]
fn regexes_must_compile() {
    rejects(&[
        (
            "PathRegexp(`/(a`)",
            "PathRegexp: invalid regular expression `/(a`: unclosed group",
        ),
        (
            "PathRegexp(`a(?=b)`)",
            "PathRegexp: invalid regular expression `a(?=b)`: look-around, including look-ahead and look-behind, is not supported",
        ),
        (
            "HeaderRegexp(`X-A`, `[`)",
            "HeaderRegexp: invalid regular expression `[`: unclosed character class",
        ),
        (
            "QueryRegexp(`k`, `(a)\\1`)",
            "QueryRegexp: invalid regular expression `(a)\\1`: backreferences are not supported",
        ),
    ]);
}

#[test]
fn method_is_upper_cased() {
    accepts(&[
        ("Method(`get`)", "Method(`GET`)"),
        ("Method(`Patch`)", "Method(`PATCH`)"),
        ("Method(`PROPFIND`)", "Method(`PROPFIND`)"),
    ]);
}

#[test]
fn header_key_is_canonical() {
    accepts(&[
        (
            "Header(`content-type`, `text/html`)",
            "Header(`Content-Type`, `text/html`)",
        ),
        ("Header(`x-FOO-bar`, `V`)", "Header(`X-Foo-Bar`, `V`)"),
        ("Header(`X_Foo_bar`, `v`)", "Header(`X_foo_bar`, `v`)"),
        ("Header(`x-1a`, `v`)", "Header(`X-1a`, `v`)"),
        (
            "HeaderRegexp(`accept`, `json`)",
            "HeaderRegexp(`Accept`, `json`)",
        ),
        // Not a token: kept as written (Go's CanonicalHeaderKey does the same).
        ("Header(`x foo`, `v`)", "Header(`x foo`, `v`)"),
        ("Header(`x-föo`, `v`)", "Header(`x-föo`, `v`)"),
        ("Header(`x:foo`, `v`)", "Header(`x:foo`, `v`)"),
        // Query keys are case-sensitive and kept.
        ("Query(`Key`, `Value`)", "Query(`Key`, `Value`)"),
    ]);
}

#[test]
fn client_ip_accepts_addresses_and_cidrs() {
    accepts(&[
        ("ClientIP(`192.168.1.7`)", "ClientIP(`192.168.1.7`)"),
        ("ClientIP(`192.168.1.7/24`)", "ClientIP(`192.168.1.7/24`)"),
        ("ClientIP(`0.0.0.0/0`)", "ClientIP(`0.0.0.0/0`)"),
        ("ClientIP(`fe80::1`)", "ClientIP(`fe80::1`)"),
        ("ClientIP(`::ffff:1.2.3.4`)", "ClientIP(`::ffff:1.2.3.4`)"),
        ("ClientIP(`::/0`)", "ClientIP(`::/0`)"),
        // Go's ParseCIDR takes leading zeros in the length; stored canonically.
        ("ClientIP(`10.0.0.0/008`)", "ClientIP(`10.0.0.0/8`)"),
    ]);
}

#[test]
fn client_ip_rejects_garbage() {
    for value in [
        "localhost",
        "10.0.0",
        "10.0.0.256",
        "010.0.0.1",
        "00.0.0.0/8",
        "1.02.3.4/8",
        "10.0.0.0/33",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0.0/8/8",
        "::1/129",
        "fe80::1%eth0",
        " 10.0.0.1",
        "10.0.0.1,10.0.0.2",
    ] {
        let rule = format!("ClientIP(`{value}`)");
        assert_eq!(
            error(&rule).to_string(),
            format!("ClientIP: invalid value {value:?}: not an IP address or CIDR"),
            "rule {rule:?}"
        );
    }
}

#[test]
fn illegal_characters_are_rejected() {
    rejects(&[
        (
            "Host(`a`)\u{a0}&& Path(`/`)",
            "unexpected token U+00A0 at 9; expected `&&`, `||` or the end of the rule",
        ),
        ("Host(`a\0`)", "illegal character U+0000 at 7"),
        ("Host(\"a\0\")", "illegal character U+0000 at 7"),
        ("Host(`a`) /* \0 */", "illegal character U+0000 at 13"),
        ("Host(`a`)\u{feff}", "illegal character U+FEFF at 9"),
        ("Host(`a\u{feff}`)", "illegal character U+FEFF at 7"),
    ]);
    // A byte-order mark is skipped at the very start, as Go's scanner does.
    assert_eq!(show("\u{feff}Host(`a`)"), "Host(`a`)");
    // NUL written as an escape is a value like any other.
    assert_eq!(show(r#"Query("k", "\x00")"#), "Query(`k`, `\0`)");
}

#[test]
fn nesting_is_limited() {
    let nested = |depth: usize| format!("{}Host(`a`){}", "(".repeat(depth), ")".repeat(depth));
    assert_eq!(show(&nested(64)), "Host(`a`)");
    assert_eq!(
        error(&nested(65)).to_string(),
        "rule nested too deeply at 64; at most 64 levels of `(` and `!` are allowed"
    );
    assert!(parse_rule(&format!("{}Host(`a`)", "!".repeat(64))).is_ok());
    assert_eq!(
        error(&format!("{}Host(`a`)", "!".repeat(65))),
        RuleError::TooDeep { at: 64 }
    );
    // Far past the limit: an error, not a stack overflow.
    assert_eq!(error(&nested(100_000)), RuleError::TooDeep { at: 64 });
    assert_eq!(error(&"!(".repeat(100_000)), RuleError::TooDeep { at: 64 });
    // Length without depth is fine.
    let long = vec!["Host(`a`)"; 10_000].join(" || ");
    assert!(matches!(parse_rule(&long), Ok(Expr::Any(items)) if items.len() == 10_000));
}

#[test]
fn long_tokens_are_cut_in_errors() {
    let rule = format!("Host(`a`) {}", "x".repeat(100));
    assert_eq!(
        error(&rule).to_string(),
        format!(
            "unexpected token `{}…` at 10; expected `&&`, `||` or the end of the rule",
            "x".repeat(32)
        )
    );
}

#[test]
fn realistic_rules_parse() {
    accepts(&[
        (
            "Host(`api.example.com`) && PathPrefix(`/v1`) && !Path(`/v1/internal`)",
            "(Host(`api.example.com`) && PathPrefix(`/v1`) && !Path(`/v1/internal`))",
        ),
        (
            "(Host(`a.example`) || Host(`b.example`)) && (Method(`GET`) || Method(`HEAD`))",
            "((Host(`a.example`) || Host(`b.example`)) && (Method(`GET`) || Method(`HEAD`)))",
        ),
        (
            "HostRegexp(`^[a-z]+\\.traefik\\.com$`) && Header(`X-Forwarded-Proto`, `https`)",
            "(HostRegexp(`^[a-z]+\\.traefik\\.com$`) && Header(`X-Forwarded-Proto`, `https`))",
        ),
        (
            "Host(\"example.com\") && ClientIP(`10.0.0.0/8`) && Query(`debug`)",
            "(Host(`example.com`) && ClientIP(`10.0.0.0/8`) && Query(`debug`))",
        ),
    ]);
}

#[test]
fn display_round_trips() {
    let rules = [
        "Host(`a`) || Path(`/b`) && !Method(`get`)",
        "!(Host(`A.example.`) || Header(`x-a`, `1`)) && QueryRegexp(`k`, `^v$`)",
        "((HostRegexp(`a`) && PathRegexp(`b`)) || ClientIP(`::1`)) && Query(`k`)",
        "Host(`*.example.com`) && (Query(`k`, `v`) || HeaderRegexp(`X-A`, `\\d+`))",
    ];
    for rule in rules {
        let expr = parse_rule(rule).unwrap_or_else(|e| panic!("{rule:?}: {e}"));
        assert_eq!(
            parse_rule(&expr.to_string()).as_ref(),
            Ok(&expr),
            "rule {rule:?}"
        );
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce without a seed file.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

const VALID: &[&str] = &[
    "Host(`a.example`) && PathPrefix(`/v1`) || !(Method(`GET`) && Header(`X-A`, `1`))",
    "HostRegexp(`^[a-z]+\\.example$`) && QueryRegexp(`k`, `^v`) && ClientIP(`10.0.0.0/8`)",
    "Path(\"/a\\x41\\u00e9\") || Query(`k`) /* c */ && // d\n PathRegexp(`\\.css$`)",
    "host(\n`a`,\n) && HEADERREGEXP(`a`, `b`...)",
];

#[test]
fn truncated_rules_never_panic() {
    for rule in VALID {
        assert!(parse_rule(rule).is_ok(), "rule {rule:?}");
        for (cut, _) in rule.char_indices() {
            let _ = parse_rule(&rule[..cut]);
            let _ = parse_rule(&rule[cut..]);
        }
    }
}

#[test]
fn garbage_never_panics() {
    const PIECES: &[&str] = &[
        "Host",
        "hostregexp",
        "PATH",
        "Pathprefix",
        "Header",
        "Query",
        "ClientIP",
        "Nope",
        "(",
        ")",
        "((",
        "))",
        ",",
        "...",
        "..",
        ".",
        "&&",
        "||",
        "&",
        "|",
        "!",
        "!!",
        "`",
        "`a`",
        "`/x`",
        "``",
        "\"",
        "\"a\"",
        "\"\\",
        "\\x",
        "\\u12",
        "\\U0010ffff",
        "\\400",
        "\\'",
        "'",
        "'a'",
        " ",
        "\t",
        "\n",
        "\r",
        "//",
        "/*",
        "*/",
        "\0",
        "\u{feff}",
        "\u{a0}",
        "é",
        "😀",
        "*",
        "*.",
        "10.0.0.0/8",
        "::1",
        "[",
        "(?=",
        "\\",
        "=",
        ";",
        "0",
        "9x",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let mut rule = String::new();
        for _ in 0..rng.below(24) {
            rule.push_str(PIECES[rng.below(PIECES.len())]);
        }
        let _ = parse_rule(&rule);
    }
    // Mutations of valid rules: replace, drop or insert one character.
    let alphabet: Vec<char> = "()`\"\\,.!&| \n\t'/*éa0".chars().collect();
    for _ in 0..4_000 {
        let mut chars: Vec<char> = VALID[rng.below(VALID.len())].chars().collect();
        for _ in 0..=rng.below(3) {
            let at = rng.below(chars.len());
            let c = alphabet[rng.below(alphabet.len())];
            match rng.below(3) {
                0 => chars[at] = c,
                1 => {
                    chars.remove(at);
                }
                _ => chars.insert(at, c),
            }
            if chars.is_empty() {
                break;
            }
        }
        let _ = parse_rule(&chars.into_iter().collect::<String>());
    }
}
