//! The route table a policy's `init()` returns: exact aliases and wildcard routes, each
//! mapping to an ordered fallback chain of targets.

use std::collections::HashMap;

use super::pattern::Pattern;

/// One entry of a fallback chain as written in the policy: `"provider/model"`,
/// `"provider"` or `"provider/*"` (the requested name, unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub provider: String,
    /// `None`: use the requested model name.
    pub model: Option<String>,
    /// `false`: only an identity route may use this target (the route or candidate said
    /// `translate: false`).
    pub translate: bool,
}

impl TargetSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (provider, model) = match s.split_once('/') {
            Some((p, "*")) => (p, None),
            Some((p, m)) if !m.is_empty() => (p, Some(m.to_string())),
            Some(_) => return Err(format!("target `{s}` has an empty model name")),
            None => (s, None),
        };
        if provider.is_empty() {
            return Err(format!(
                "target `{s}` has no provider; write \"provider/model\""
            ));
        }
        Ok(Self {
            provider: provider.to_string(),
            model,
            translate: true,
        })
    }

    /// The model name to ask the provider for, given the requested name.
    pub fn model_for<'a>(&'a self, requested: &'a str) -> &'a str {
        self.model.as_deref().unwrap_or(requested)
    }
}

#[derive(Debug, Clone)]
struct Route {
    pattern: Pattern,
    targets: Vec<TargetSpec>,
}

/// Aliases (exact, case-insensitive) and wildcard routes, sorted most specific first.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    exact: HashMap<String, Vec<TargetSpec>>,
    patterns: Vec<Route>,
}

impl RouteTable {
    /// Adds a route; a pattern without `*` or `?` is an exact alias.
    pub fn add(&mut self, pattern: &str, targets: Vec<TargetSpec>) {
        let p = Pattern::new(pattern, self.exact.len() + self.patterns.len());
        if p.is_wildcard() {
            self.patterns.push(Route {
                pattern: p,
                targets,
            });
            self.patterns
                .sort_by(|a, b| a.pattern.specificity_cmp(&b.pattern));
        } else {
            self.exact
                .entry(pattern.to_ascii_lowercase())
                .or_insert(targets);
        }
    }

    /// The fallback chain for `model`: an exact alias, else the most specific matching
    /// pattern, else `None`. Also returns the pattern that matched.
    pub fn lookup(&self, model: &str) -> Option<(&str, &[TargetSpec])> {
        if !self.exact.is_empty() {
            if let Some((name, t)) = self.exact.get_key_value(&model.to_ascii_lowercase()) {
                return Some((name.as_str(), t));
            }
        }
        self.patterns
            .iter()
            .find(|r| r.pattern.matches(model))
            .map(|r| (r.pattern.as_str(), r.targets.as_slice()))
    }

    /// Every alias and pattern, as written.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.exact
            .keys()
            .map(String::as_str)
            .chain(self.patterns.iter().map(|r| r.pattern.as_str()))
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TargetSpec {
        TargetSpec::parse(s).unwrap()
    }

    #[test]
    fn aliases_beat_patterns_and_targets_parse() {
        let mut rt = RouteTable::default();
        rt.add("gpt-4o*", vec![t("openai/*")]);
        rt.add("GPT-4O", vec![t("azure/gpt-4o-deploy")]);
        rt.add("*", vec![t("openrouter")]);
        assert_eq!(rt.lookup("gpt-4o").unwrap().1, &[t("azure/gpt-4o-deploy")]);
        let (pat, targets) = rt.lookup("gpt-4o-mini").unwrap();
        assert_eq!(pat, "gpt-4o*");
        assert_eq!(targets[0].model_for("gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(rt.lookup("llama").unwrap().0, "*");
        assert_eq!(
            t("openrouter/meta-llama/llama-3").model.as_deref(),
            Some("meta-llama/llama-3")
        );
        assert!(TargetSpec::parse("/x").is_err());
        assert!(TargetSpec::parse("p/").is_err());
    }
}
