use std::borrow::Cow;
use switchyard_shared::rule::{Expr, Matcher};
pub struct RequestView<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a http::Method,
    pub headers: &'a http::HeaderMap,
    pub client_ip: std::net::IpAddr,
}
pub struct RouteInput<'a, T> {
    pub name: &'a str,
    pub rule: &'a Expr,
    pub priority: i64,
    pub payload: T,
}
#[derive(Debug)]
pub struct RouteTable<T> {
    routes: Vec<(String, Expr, i64, T)>,
}
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct RouterError;
#[derive(Debug)]
pub struct InvalidPath;
impl<T> RouteTable<T> {
    pub fn build<'a>(
        routes: impl IntoIterator<Item = RouteInput<'a, T>>,
    ) -> Result<Self, RouterError> {
        let mut v: Vec<_> = routes
            .into_iter()
            .map(|r| (r.name.to_owned(), r.rule.clone(), r.priority, r.payload))
            .collect();
        v.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        Ok(Self { routes: v })
    }
    pub fn find(&self, req: &RequestView<'_>) -> Option<&T> {
        self.routes.iter().find(|r| eval(&r.1, req)).map(|r| &r.3)
    }
    pub fn len(&self) -> usize {
        self.routes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}
fn eval(e: &Expr, r: &RequestView) -> bool {
    match e {
        Expr::All(v) => v.iter().all(|x| eval(x, r)),
        Expr::Any(v) => v.iter().any(|x| eval(x, r)),
        Expr::Not(x) => !eval(x, r),
        Expr::Matcher(Matcher::Host(h)) => normalize_host(r.host) == h.as_str(),
        Expr::Matcher(Matcher::PathPrefix(p)) => r.path.starts_with(p.as_str()),
        Expr::Matcher(Matcher::Path(p)) => r.path == p,
        _ => false,
    }
}
pub fn routing_path(raw: &str) -> Result<Cow<'_, str>, InvalidPath> {
    Ok(Cow::Borrowed(raw))
}
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    Cow::Owned(raw.split(':').next().unwrap_or("").to_lowercase())
}
