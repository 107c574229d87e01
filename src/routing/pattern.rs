//! Model-name patterns: `*` (any run) and `?` (one character), case-insensitive, ranked by
//! specificity so that the most specific matching pattern wins.

use std::cmp::Ordering;

use wildmatch::WildMatch;

/// A compiled model-name pattern with its specificity.
#[derive(Debug, Clone)]
pub struct Pattern {
    raw: String,
    matcher: WildMatch,
    /// Characters that are neither `*` nor `?`.
    literals: usize,
    stars: usize,
    questions: usize,
    /// Declaration order, the last tie-breaker.
    order: usize,
}

impl Pattern {
    pub fn new(raw: &str, order: usize) -> Self {
        let stars = raw.chars().filter(|&c| c == '*').count();
        let questions = raw.chars().filter(|&c| c == '?').count();
        Self {
            raw: raw.to_string(),
            matcher: WildMatch::new_case_insensitive(raw),
            literals: raw.chars().count() - stars - questions,
            stars,
            questions,
            order,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn is_wildcard(&self) -> bool {
        self.stars + self.questions > 0
    }

    pub fn matches(&self, model: &str) -> bool {
        self.matcher.matches(model)
    }

    /// Most specific first: more literal characters, then fewer `*`, then fewer `?`, then
    /// earlier declaration. (A score that weighs `?` like a literal would let `gpt-4?`
    /// beat `gpt-4o*` for `gpt-4o`; counting literals only does not.)
    pub fn specificity_cmp(&self, other: &Self) -> Ordering {
        other
            .literals
            .cmp(&self.literals)
            .then(self.stars.cmp(&other.stars))
            .then(self.questions.cmp(&other.questions))
            .then(self.order.cmp(&other.order))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pattern that wins for `model` among `patterns` (declared in this order).
    fn winner<'a>(patterns: &[&'a str], model: &str) -> Option<&'a str> {
        let mut ps: Vec<(Pattern, &str)> = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| (Pattern::new(p, i), *p))
            .collect();
        ps.sort_by(|a, b| a.0.specificity_cmp(&b.0));
        ps.into_iter()
            .find(|(p, _)| p.matches(model))
            .map(|(_, s)| s)
    }

    #[test]
    fn specificity_table() {
        let cases: &[(&[&str], &str, Option<&str>)] = &[
            // OmniRoute ranks `gpt-4?` above `gpt-4o*` for `gpt-4o`; the longer literal prefix wins here.
            (&["gpt-4?", "gpt-4o*"], "gpt-4o", Some("gpt-4o*")),
            (&["gpt-4o*", "gpt-4?"], "gpt-4o", Some("gpt-4o*")),
            (&["*", "gpt-*", "gpt-4*"], "gpt-4o-mini", Some("gpt-4*")),
            (
                &["gpt-4*", "gpt-4o-mini"],
                "gpt-4o-mini",
                Some("gpt-4o-mini"),
            ),
            // Same literals: fewer `*` wins.
            (&["gpt*4*", "gpt-4*"], "gpt-4o", Some("gpt-4*")),
            // Same literals and stars: fewer `?` wins.
            (
                &["claude-?-sonnet*", "claude-3-sonnet*"],
                "claude-3-sonnet-2024",
                Some("claude-3-sonnet*"),
            ),
            (
                &["claude-?-sonnet*", "claude-3?sonnet*"],
                "claude-3-sonnet",
                Some("claude-?-sonnet*"),
            ),
            // Full tie: declaration order.
            (&["a*c", "ab*"], "abc", Some("a*c")),
            (&["ab*", "a*c"], "abc", Some("ab*")),
            // Case-insensitive; `?` is exactly one character.
            (&["GPT-4O*"], "gpt-4o-2024", Some("GPT-4O*")),
            (&["gpt-4?"], "gpt-4", None),
            (&["gpt-4?"], "gpt-4oo", None),
            (&["claude-?-sonnet*"], "claude-3-5-sonnet", None),
            (
                &["claude-*-sonnet*"],
                "claude-3-5-sonnet-latest",
                Some("claude-*-sonnet*"),
            ),
        ];
        for (patterns, model, expected) in cases {
            assert_eq!(
                winner(patterns, model),
                *expected,
                "{patterns:?} for {model}"
            );
        }
    }
}
