//! Topic filters: what a SUBSCRIBE names, as the topics of the namespace
//! it covers.
//!
//! A filter without wildcards is one topic (`a/b/c` is `a.b.c`). One with
//! `+` (one level) or `#` (any number of levels, the parent included) is a
//! pattern over the namespace's topic names, so it also covers topics
//! created after it. As MQTT requires, a filter starting with a wildcard
//! does not match topics whose first level starts with `$` (`$SYS/...`).
//! `$share/{group}/{filter}` is the filter shared by a group: one Shared
//! subscription, each message going to one of its members.

use gateway_api::backend::TopicSelector;
use gateway_api::topic::escape_word;
use gateway_api::topic::Namespace;
use gateway_api::TopicName;

/// A parsed topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    /// The filter without any `$share/{group}/` prefix.
    pub levels: String,
    /// The sharing group, for `$share/{group}/...`.
    pub share: Option<String>,
}

/// What a filter covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Covered {
    /// One topic, by its MQTT name.
    Topic(String),
    /// Every topic whose full name the regular expression matches.
    Pattern(String),
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FilterError {
    #[error("empty topic filter")]
    Empty,
    #[error("`#` must be the last level, alone: {0}")]
    MultiLevel(String),
    #[error("`+` must stand alone in its level: {0}")]
    SingleLevel(String),
    #[error("a shared subscription needs `$share/{{group}}/{{filter}}`: {0}")]
    Share(String),
    #[error("a topic filter holds no NUL")]
    Nul,
}

impl Filter {
    /// Parses and checks `text` (MQTT 5 §4.7, §4.8.2).
    pub(crate) fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.contains('\0') {
            return Err(FilterError::Nul);
        }
        let (share, levels) = match text.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((group, levels))
                    if !group.is_empty() && !group.contains(['+', '#']) && !levels.is_empty() =>
                {
                    (Some(group.to_owned()), levels)
                }
                _ => return Err(FilterError::Share(text.to_owned())),
            },
            None => (None, text),
        };
        if levels.is_empty() {
            return Err(FilterError::Empty);
        }
        let parts: Vec<&str> = levels.split('/').collect();
        for (i, level) in parts.iter().enumerate() {
            if level.contains('#') && (*level != "#" || i + 1 != parts.len()) {
                return Err(FilterError::MultiLevel(text.to_owned()));
            }
            if level.contains('+') && *level != "+" {
                return Err(FilterError::SingleLevel(text.to_owned()));
            }
        }
        Ok(Filter {
            levels: levels.to_owned(),
            share,
        })
    }

    /// Whether the filter has a wildcard.
    pub(crate) fn is_wildcard(&self) -> bool {
        self.levels.contains(['+', '#'])
    }

    /// The topics the filter covers in `namespace`.
    pub(crate) fn covered(&self, namespace: &Namespace) -> Covered {
        if !self.is_wildcard() {
            return Covered::Topic(self.levels.clone());
        }
        let mut regex = regex_escape(&format!(
            "persistent://{}/{}/",
            namespace.tenant, namespace.namespace
        ));
        let parts: Vec<&str> = self.levels.split('/').collect();
        for (i, level) in parts.iter().enumerate() {
            let separator = if i == 0 { "" } else { r"\." };
            match *level {
                "#" if i == 0 => regex.push_str(NOT_DOLLAR_WORDS),
                // The parent level matches too: `a/#` covers `a`.
                "#" => regex.push_str(r"(?:\..*)?"),
                "+" if i == 0 => regex.push_str(NOT_DOLLAR_WORD),
                "+" => {
                    regex.push_str(separator);
                    regex.push_str("[^.]*");
                }
                word => {
                    regex.push_str(separator);
                    regex.push_str(&regex_escape(&escape_word(word)));
                }
            }
        }
        Covered::Pattern(regex)
    }

    /// The backend's selector of what the filter covers in `namespace`;
    /// `topic` turns a name without wildcards into its topic (resolving
    /// and authorizing it, or not).
    pub(crate) fn selector<E>(
        &self,
        namespace: &Namespace,
        topic: impl FnOnce(&str) -> Result<TopicName, E>,
    ) -> Result<TopicSelector, E> {
        Ok(match self.covered(namespace) {
            Covered::Topic(name) => TopicSelector::Topics(vec![topic(&name)?]),
            Covered::Pattern(regex) => TopicSelector::Pattern {
                namespace: namespace.clone(),
                regex,
            },
        })
    }

    /// Whether `topic` (an MQTT topic name) matches this filter.
    pub(crate) fn matches(&self, topic: &str) -> bool {
        if self.levels.starts_with(['+', '#']) && topic.starts_with('$') {
            return false;
        }
        let mut names = topic.split('/');
        for level in self.levels.split('/') {
            match level {
                "#" => return true,
                "+" => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                word => {
                    if names.next() != Some(word) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }
}

/// One first word that does not stand for a level starting with `$`
/// (escaped `%24`).
const NOT_DOLLAR_WORD: &str = "(?:|[^.%][^.]*|%[^2.][^.]*|%2[^4.][^.]*)";

/// Any local name whose first word does not stand for a level starting
/// with `$`.
const NOT_DOLLAR_WORDS: &str = "(?:|[^.%][^.]*|%[^2.][^.]*|%2[^4.][^.]*)(?:\\..*)?";

/// `text` with the regular expression's special characters escaped.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(filter: &str) -> regex::Regex {
        let ns = Namespace::default_namespace();
        match Filter::parse(filter).unwrap().covered(&ns) {
            Covered::Pattern(p) => regex::Regex::new(&format!("^(?:{p})$")).unwrap(),
            Covered::Topic(t) => panic!("{filter} is the topic {t}"),
        }
    }

    fn full(mqtt: &str) -> String {
        TopicName::from_mqtt(mqtt, &Namespace::default_namespace())
            .unwrap()
            .as_str()
            .to_owned()
    }

    #[test]
    fn wildcards_cover_what_mqtt_says_and_no_more() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("a/+/c", &["a/b/c", "a//c"], &["a/b/c/d", "a/c", "x/b/c"]),
            ("a/#", &["a", "a/b", "a/b/c"], &["ab", "b/a"]),
            ("#", &["a", "a/b", "x y/z"], &["$SYS/a", "$x"]),
            ("+/b", &["a/b", "/b"], &["$SYS/b", "a/b/c"]),
            ("$SYS/#", &["$SYS/broker", "$SYS"], &["SYS/a"]),
            ("a.b/+", &["a.b/c"], &["a/b/c"]),
        ];
        for (filter, matching, other) in cases {
            let re = pattern(filter);
            let parsed = Filter::parse(filter).unwrap();
            for t in *matching {
                assert!(re.is_match(&full(t)), "{filter} covers {t}");
                assert!(parsed.matches(t), "{filter} matches {t}");
            }
            for t in *other {
                assert!(!re.is_match(&full(t)), "{filter} does not cover {t}");
                assert!(!parsed.matches(t), "{filter} does not match {t}");
            }
        }
    }

    #[test]
    fn malformed_filters_are_refused() {
        for bad in [
            "",
            "a/#/b",
            "a#",
            "a/b+",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "a\0",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad:?}");
        }
        let shared = Filter::parse("$share/g1/a/+").unwrap();
        assert_eq!(shared.share.as_deref(), Some("g1"));
        assert_eq!(shared.levels, "a/+");
    }
}
