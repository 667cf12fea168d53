//! `--name value` command-line flags, for the benchmark helper binaries.

use std::collections::BTreeMap;

use anyhow::{Context, bail};

/// `--name value` pairs; errors end with the binary's usage text.
pub struct Flags {
    values: BTreeMap<String, String>,
    usage: &'static str,
}

impl Flags {
    pub fn parse(args: Vec<String>, usage: &'static str) -> anyhow::Result<Self> {
        let mut values = BTreeMap::new();
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let Some(name) = flag.strip_prefix("--") else {
                bail!("unexpected argument `{flag}`\n{usage}");
            };
            let value = it
                .next()
                .with_context(|| format!("--{name} needs a value"))?;
            values.insert(name.to_owned(), value);
        }
        Ok(Self { values, usage })
    }

    pub fn str(&self, name: &str) -> anyhow::Result<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .with_context(|| format!("--{name} is required\n{}", self.usage))
    }

    pub fn opt(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn num(&self, name: &str, default: Option<u64>) -> anyhow::Result<u64> {
        match (self.values.get(name), default) {
            (Some(v), _) => v
                .parse()
                .with_context(|| format!("--{name} `{v}` is not a number")),
            (None, Some(d)) => Ok(d),
            (None, None) => bail!("--{name} is required\n{}", self.usage),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flags_are_read_by_name() {
        let f = Flags::parse(args(&["--count", "3", "--url", "x"]), "usage").unwrap();
        assert_eq!(f.num("count", None).unwrap(), 3);
        assert_eq!(f.num("missing", Some(7)).unwrap(), 7);
        assert_eq!(f.str("url").unwrap(), "x");
        assert_eq!(f.opt("other"), None);
        let e = f.str("other").unwrap_err().to_string();
        assert!(
            e.contains("--other is required") && e.ends_with("usage"),
            "{e}"
        );
        assert!(f.num("url", None).is_err());
    }

    #[test]
    fn malformed_flags_are_refused() {
        assert!(Flags::parse(args(&["count", "3"]), "u").is_err());
        assert!(Flags::parse(args(&["--count"]), "u").is_err());
    }
}
