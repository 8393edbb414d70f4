//! Topic names and the cross-protocol naming convention.
//!
//! Every protocol names the same topic. The Pulsar name is the canonical one:
//!
//! | Pulsar                              | Kafka   | MQTT    | AMQP key | WebSocket path                    |
//! |-------------------------------------|---------|---------|----------|-----------------------------------|
//! | `persistent://public/default/a.b.c` | `a.b.c` | `a/b/c` | `a.b.c`  | `persistent/public/default/a.b.c` |
//!
//! The local name (the part after the namespace) is a sequence of *words*
//! separated by `.`. Within a word, the characters `[A-Za-z0-9_\-=:~]` stand
//! for themselves and every other character is written as the percent-encoded
//! bytes of its UTF-8 form (`%2E` for a `.` inside an MQTT level, `%25` for a
//! `%`, `%20` for a space). Only this canonical form is a valid local name, so
//! each conversion is a bijection:
//!
//! - MQTT: levels `/` <-> words `.` (as RabbitMQ does between MQTT and AMQP).
//! - AMQP: the routing key's words are the local name's words.
//!
//! Each protocol's name maps to exactly one topic, and back. The way back is
//! partial: a topic has no MQTT name when a word holds `/`, `+`, `#` or NUL
//! (MQTT levels cannot), no AMQP key when a word holds `.` or the key would
//! pass AMQP's 255 bytes, and no Kafka name outside Kafka's alphabet.
//! - Kafka: a Kafka name (`[A-Za-z0-9._-]`, at most 249 characters) is the
//!   local name unchanged. A Pulsar topic whose name falls outside Kafka's
//!   alphabet has no Kafka name ([`TopicName::kafka_name`] returns `None`):
//!   Kafka's alphabet has no character left over to escape with.
//! - WebSocket: the local name as one URL path segment (`%` written `%25`).
//!
//! Partition `p` of topic `t` is the Pulsar topic `t-partition-p`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The suffix Pulsar gives each partition of a partitioned topic.
pub const PARTITION_SUFFIX: &str = "-partition-";

/// Longest accepted local name, in bytes: a bound on what a peer can make the
/// gateway store per topic, far above any real name.
pub const MAX_LOCAL_NAME_LEN: usize = 2048;

/// Longest AMQP routing key (a short string).
pub const MAX_AMQP_KEY_LEN: usize = 255;

/// Longest Kafka topic name (Kafka's own limit).
pub const MAX_KAFKA_NAME_LEN: usize = 249;

/// Why a name could not be turned into a topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name, or one of its parts (tenant, namespace, local name), is
    /// empty.
    #[error("topic name is empty")]
    Empty,
    /// The name, or one of its parts, is longer than its limit.
    #[error("topic name is longer than {max} bytes")]
    TooLong {
        /// The limit that was passed, in bytes (for example
        /// [`MAX_LOCAL_NAME_LEN`] or [`MAX_KAFKA_NAME_LEN`]).
        max: usize,
    },
    /// The name breaks a rule of its grammar.
    #[error("invalid topic name {name:?}: {reason}")]
    Invalid {
        /// The name (or part of one) as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
}

fn invalid(name: &str, reason: &'static str) -> NameError {
    NameError::Invalid {
        name: name.to_owned(),
        reason,
    }
}

/// Pulsar's topic domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    /// Stored durably (`persistent://`).
    Persistent,
    /// Kept in memory only by Pulsar (`non-persistent://`).
    NonPersistent,
}

impl Domain {
    /// The scheme as written in a topic name, without `://`.
    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Persistent => "persistent",
            Domain::NonPersistent => "non-persistent",
        }
    }

    /// Parses `persistent` or `non-persistent`.
    pub fn parse(s: &str) -> Option<Domain> {
        match s {
            "persistent" => Some(Domain::Persistent),
            "non-persistent" => Some(Domain::NonPersistent),
            _ => None,
        }
    }
}

/// A tenant and namespace: where topics live, what routing and pattern
/// subscriptions are scoped to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace {
    /// Pulsar tenant (`public` by default).
    pub tenant: String,
    /// Pulsar namespace within the tenant (`default` by default).
    pub namespace: String,
}

impl Namespace {
    /// Builds a namespace after checking both names against Pulsar's rules.
    pub fn new(tenant: &str, namespace: &str) -> Result<Namespace, NameError> {
        check_entity(tenant)?;
        check_entity(namespace)?;
        Ok(Namespace {
            tenant: tenant.to_owned(),
            namespace: namespace.to_owned(),
        })
    }

    /// Pulsar's default namespace, `public/default`.
    pub fn default_namespace() -> Namespace {
        Namespace {
            tenant: "public".into(),
            namespace: "default".into(),
        }
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace::default_namespace()
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.namespace)
    }
}

/// A parsed, validated Pulsar topic name, possibly one partition of a
/// partitioned topic. Cheap to clone; compares by its full name.
#[derive(Clone)]
pub struct TopicName(Arc<Inner>);

struct Inner {
    /// The full name, built once: topics are compared, hashed and logged far
    /// more often than they are built.
    full: String,
    domain: Domain,
    namespace: Namespace,
    /// Local name without any partition suffix.
    base: String,
    /// `Some(p)` when this is partition `p` of `base`.
    partition: Option<u32>,
}

impl TopicName {
    /// Builds a topic from its parts. `local` may carry a `-partition-N`
    /// suffix, which makes this partition N of the base topic.
    pub fn new(domain: Domain, namespace: &Namespace, local: &str) -> Result<TopicName, NameError> {
        check_entity(&namespace.tenant)?;
        check_entity(&namespace.namespace)?;
        check_local(local)?;
        let (base, partition) = split_partition(local);
        Ok(Self::from_checked(
            domain,
            namespace.clone(),
            base,
            partition,
        ))
    }

    fn from_checked(
        domain: Domain,
        namespace: Namespace,
        base: &str,
        partition: Option<u32>,
    ) -> TopicName {
        let mut full = format!("{}://{}/{}", domain.as_str(), namespace, base);
        if let Some(p) = partition {
            full.push_str(PARTITION_SUFFIX);
            full.push_str(&p.to_string());
        }
        TopicName(Arc::new(Inner {
            full,
            domain,
            namespace,
            base: base.to_owned(),
            partition,
        }))
    }

    /// Parses a Pulsar topic name in any form Pulsar accepts:
    /// `persistent://tenant/ns/local`, `tenant/ns/local` or `local`
    /// (the short forms are persistent; `local` lives in `default_ns`).
    pub fn parse(name: &str, default_ns: &Namespace) -> Result<TopicName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        let (domain, rest) = match name.split_once("://") {
            Some((scheme, rest)) => (
                Domain::parse(scheme).ok_or_else(|| invalid(name, "unknown domain"))?,
                rest,
            ),
            None => (Domain::Persistent, name),
        };
        let parts: Vec<&str> = rest.splitn(3, '/').collect();
        match parts.as_slice() {
            [local] if !name.contains("://") => TopicName::new(domain, default_ns, local),
            [tenant, ns, local] => TopicName::new(domain, &Namespace::new(tenant, ns)?, local),
            _ => Err(invalid(
                name,
                "expected domain://tenant/namespace/topic, tenant/namespace/topic or topic",
            )),
        }
    }

    /// The Pulsar topic for a Kafka topic name (identity on the local name).
    pub fn from_kafka(name: &str, ns: &Namespace) -> Result<TopicName, NameError> {
        check_kafka(name)?;
        let (base, partition) = split_partition(name);
        if partition.is_some() {
            return Err(invalid(name, "a Kafka topic name cannot name a partition"));
        }
        Ok(Self::from_checked(
            Domain::Persistent,
            ns.clone(),
            base,
            None,
        ))
    }

    /// The Kafka name of this topic's base (without partition), or `None`
    /// when its local name falls outside Kafka's alphabet.
    pub fn kafka_name(&self) -> Option<&str> {
        let base = &self.0.base;
        check_kafka(base).ok().map(|()| base.as_str())
    }

    /// The Pulsar topic for an MQTT topic name (not a filter: no wildcards).
    pub fn from_mqtt(topic: &str, ns: &Namespace) -> Result<TopicName, NameError> {
        if topic.is_empty() {
            return Err(NameError::Empty);
        }
        if topic.contains(['+', '#', '\0']) {
            return Err(invalid(topic, "an MQTT topic name has no wildcards or NUL"));
        }
        let local = join_words(topic.split('/'));
        TopicName::new(Domain::Persistent, ns, &local)
    }

    /// The MQTT topic name of this topic (partition suffix included), or
    /// `None` when a word holds a character an MQTT level cannot.
    pub fn mqtt_topic(&self) -> Option<String> {
        let levels = self
            .local_name()
            .split('.')
            .map(unescape_word)
            .collect::<Option<Vec<_>>>()?;
        if levels.iter().any(|l| l.contains(['/', '+', '#', '\0'])) {
            return None;
        }
        Some(levels.join("/"))
    }

    /// The Pulsar topic for an AMQP routing key.
    pub fn from_amqp_key(key: &str, ns: &Namespace) -> Result<TopicName, NameError> {
        if key.is_empty() {
            return Err(NameError::Empty);
        }
        if key.len() > MAX_AMQP_KEY_LEN {
            return Err(NameError::TooLong {
                max: MAX_AMQP_KEY_LEN,
            });
        }
        TopicName::new(Domain::Persistent, ns, &join_words(key.split('.')))
    }

    /// The AMQP routing key of this topic, or `None` when a word holds a
    /// `.` or the key would be longer than AMQP's 255 bytes.
    pub fn amqp_key(&self) -> Option<String> {
        let words = self
            .local_name()
            .split('.')
            .map(unescape_word)
            .collect::<Option<Vec<_>>>()?;
        if words.iter().any(|w| w.contains('.')) {
            return None;
        }
        Some(words.join(".")).filter(|k| k.len() <= MAX_AMQP_KEY_LEN)
    }

    /// The topic part of a Pulsar WebSocket API path:
    /// `persistent/tenant/ns/local`, the local name as one URL path segment.
    pub fn websocket_path(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.0.domain.as_str(),
            self.0.namespace.tenant,
            self.0.namespace.namespace,
            self.local_name().replace('%', "%25")
        )
    }

    /// Parses the topic part of a WebSocket API path (the inverse of
    /// [`TopicName::websocket_path`]); the last segment is URL-decoded once.
    pub fn from_websocket_path(path: &str) -> Result<TopicName, NameError> {
        let parts: Vec<&str> = path.splitn(4, '/').collect();
        let [domain, tenant, ns, local] = parts.as_slice() else {
            return Err(invalid(path, "expected domain/tenant/namespace/topic"));
        };
        let domain = Domain::parse(domain).ok_or_else(|| invalid(path, "unknown domain"))?;
        let local = percent_decode(local).ok_or_else(|| invalid(path, "bad URL escape"))?;
        TopicName::new(domain, &Namespace::new(tenant, ns)?, &local)
    }

    /// Partition `index` of this topic's base.
    pub fn partition(&self, index: u32) -> TopicName {
        Self::from_checked(
            self.0.domain,
            self.0.namespace.clone(),
            &self.0.base,
            Some(index),
        )
    }

    /// The base topic (this one, without its partition suffix).
    pub fn base(&self) -> TopicName {
        match self.0.partition {
            None => self.clone(),
            Some(_) => {
                Self::from_checked(self.0.domain, self.0.namespace.clone(), &self.0.base, None)
            }
        }
    }

    /// `Some(p)` if this is partition `p` of a partitioned topic.
    pub fn partition_index(&self) -> Option<u32> {
        self.0.partition
    }

    /// The domain (persistent or not).
    pub fn domain(&self) -> Domain {
        self.0.domain
    }

    /// Tenant and namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.0.namespace
    }

    /// The base local name, without partition suffix.
    pub fn base_name(&self) -> &str {
        &self.0.base
    }

    /// The local name as Pulsar writes it, partition suffix included.
    pub fn local_name(&self) -> &str {
        let ns_len = self.0.domain.as_str().len() + 3 + self.0.namespace.tenant.len() + 1;
        &self.0.full[ns_len + self.0.namespace.namespace.len() + 1..]
    }

    /// The full name, `persistent://tenant/ns/local`.
    pub fn as_str(&self) -> &str {
        &self.0.full
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.full)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicName({})", self.0.full)
    }
}

impl PartialEq for TopicName {
    fn eq(&self, other: &Self) -> bool {
        // Clones of one name, the common case, compare without reading it.
        Arc::ptr_eq(&self.0, &other.0) || self.0.full == other.0.full
    }
}

impl Eq for TopicName {}

impl std::hash::Hash for TopicName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.full.hash(state)
    }
}

impl PartialOrd for TopicName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TopicName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.full.cmp(&other.0.full)
    }
}

impl FromStr for TopicName {
    type Err = NameError;

    /// Parses with `public/default` as the namespace of short names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopicName::parse(s, &Namespace::default_namespace())
    }
}

/// True for the characters a word of a local name holds unescaped.
pub fn is_raw_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | ':' | '~')
}

/// Writes one word (an MQTT level, an AMQP word) in canonical form.
pub fn escape_word(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if is_raw_char(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// The inverse of [`escape_word`]; `None` for a malformed escape.
pub fn unescape_word(word: &str) -> Option<String> {
    percent_decode(word)
}

fn join_words<'a>(words: impl Iterator<Item = &'a str>) -> String {
    words.map(escape_word).collect::<Vec<_>>().join(".")
}

/// Decodes `%XX` escapes; `None` if an escape is malformed or the bytes are
/// not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Splits a `-partition-N` suffix off a local name.
fn split_partition(local: &str) -> (&str, Option<u32>) {
    if let Some(pos) = local.rfind(PARTITION_SUFFIX) {
        let digits = &local[pos + PARTITION_SUFFIX.len()..];
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if canonical && pos > 0 {
            if let Ok(p) = digits.parse::<u32>() {
                return (&local[..pos], Some(p));
            }
        }
    }
    (local, None)
}

/// Pulsar's rule for tenant and namespace names: `[-=:.\w]+`.
fn check_entity(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_LOCAL_NAME_LEN {
        return Err(NameError::TooLong {
            max: MAX_LOCAL_NAME_LEN,
        });
    }
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '=' | ':' | '.' | '_'))
    {
        Ok(())
    } else {
        Err(invalid(
            name,
            "tenant and namespace allow only [-=:.A-Za-z0-9_]",
        ))
    }
}

/// A local name must be canonical: words of raw characters and `%XX` escapes
/// of exactly the characters that are not raw, joined by `.`.
fn check_local(local: &str) -> Result<(), NameError> {
    if local.is_empty() {
        return Err(NameError::Empty);
    }
    if local.len() > MAX_LOCAL_NAME_LEN {
        return Err(NameError::TooLong {
            max: MAX_LOCAL_NAME_LEN,
        });
    }
    for word in local.split('.') {
        if word.chars().any(|c| !is_raw_char(c) && c != '%') {
            return Err(invalid(local, "character must be percent-encoded"));
        }
        let decoded = percent_decode(word).ok_or_else(|| invalid(local, "bad percent escape"))?;
        if escape_word(&decoded) != word {
            return Err(invalid(
                local,
                "escape is not canonical (uppercase, only where needed)",
            ));
        }
    }
    Ok(())
}

fn check_kafka(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_KAFKA_NAME_LEN {
        return Err(NameError::TooLong {
            max: MAX_KAFKA_NAME_LEN,
        });
    }
    if name == "." || name == ".." {
        return Err(invalid(name, "'.' and '..' are not Kafka topic names"));
    }
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Ok(())
    } else {
        Err(invalid(name, "Kafka topic names allow only [A-Za-z0-9._-]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ns() -> Namespace {
        Namespace::default_namespace()
    }

    #[test]
    fn the_design_table_holds() {
        let t = TopicName::from_mqtt("a/b/c", &ns()).unwrap();
        assert_eq!(t.as_str(), "persistent://public/default/a.b.c");
        assert_eq!(t.kafka_name(), Some("a.b.c"));
        assert_eq!(t.amqp_key().as_deref(), Some("a.b.c"));
        assert_eq!(t.mqtt_topic().as_deref(), Some("a/b/c"));
        assert_eq!(t.websocket_path(), "persistent/public/default/a.b.c");
        assert_eq!(TopicName::from_kafka("a.b.c", &ns()).unwrap(), t);
        assert_eq!(TopicName::from_amqp_key("a.b.c", &ns()).unwrap(), t);
    }

    #[test]
    fn short_and_full_forms_parse_alike() {
        let full: TopicName = "persistent://public/default/orders".parse().unwrap();
        assert_eq!("orders".parse::<TopicName>().unwrap(), full);
        assert_eq!("public/default/orders".parse::<TopicName>().unwrap(), full);
        assert!("persistent://public/orders".parse::<TopicName>().is_err());
        assert!("bogus://public/default/orders"
            .parse::<TopicName>()
            .is_err());
    }

    #[test]
    fn partitions_are_suffixes() {
        let p: TopicName = "persistent://public/default/t-partition-3".parse().unwrap();
        assert_eq!(p.partition_index(), Some(3));
        assert_eq!(p.base_name(), "t");
        assert_eq!(p.base().as_str(), "persistent://public/default/t");
        assert_eq!(p.base().partition(3), p);
        assert_eq!(p.local_name(), "t-partition-3");
        let odd: TopicName = "t-partition-03".parse().unwrap();
        assert_eq!(odd.partition_index(), None);
    }

    #[test]
    fn mqtt_levels_with_dots_and_spaces_are_escaped() {
        let t = TopicName::from_mqtt("v1.0/room 2/%", &ns()).unwrap();
        assert_eq!(t.local_name(), "v1%2E0.room%202.%25");
        assert_eq!(t.mqtt_topic().as_deref(), Some("v1.0/room 2/%"));
        assert_eq!(t.kafka_name(), None);
        assert_eq!(t.amqp_key(), None, "a word holds a '.'");
        assert_eq!(
            TopicName::from_websocket_path(&t.websocket_path()).unwrap(),
            t
        );
    }

    #[test]
    fn non_canonical_local_names_are_refused() {
        assert!("a%2eb".parse::<TopicName>().is_err(), "lowercase hex");
        assert!("a%41b".parse::<TopicName>().is_err(), "escaped raw char");
        assert!("a b".parse::<TopicName>().is_err(), "raw space");
        assert!("a%2".parse::<TopicName>().is_err(), "truncated escape");
        assert!(TopicName::from_mqtt("a/+/b", &ns()).is_err());
        assert!(TopicName::from_kafka("a:b", &ns()).is_err());
        assert!(TopicName::from_kafka("..", &ns()).is_err());
    }

    fn mqtt_topic() -> impl Strategy<Value = String> {
        // Any characters but the wildcards and NUL, with empty levels too.
        proptest::collection::vec("[^+#\u{0}/]{0,6}", 1..5)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("non-empty", |t| !t.is_empty())
    }

    proptest! {
        #[test]
        fn mqtt_round_trips(topic in mqtt_topic()) {
            let t = TopicName::from_mqtt(&topic, &ns()).unwrap();
            prop_assert_eq!(t.mqtt_topic(), Some(topic));
            if let Some(key) = t.amqp_key() {
                prop_assert_eq!(TopicName::from_amqp_key(&key, &ns()).unwrap(), t.clone());
            }
            let reparsed: TopicName = t.as_str().parse().unwrap();
            prop_assert_eq!(&reparsed, &t);
            prop_assert_eq!(TopicName::from_websocket_path(&t.websocket_path()).unwrap(), t);
        }

        #[test]
        fn amqp_round_trips(key in "[^\u{0}]{1,60}") {
            let t = TopicName::from_amqp_key(&key, &ns()).unwrap();
            prop_assert_eq!(t.amqp_key(), Some(key));
            if let Some(m) = t.mqtt_topic() {
                prop_assert_eq!(TopicName::from_mqtt(&m, &ns()).unwrap(), t);
            }
        }

        #[test]
        fn kafka_round_trips(name in "[A-Za-z0-9._-]{1,249}") {
            prop_assume!(name != "." && name != "..");
            prop_assume!(split_partition(&name).1.is_none());
            let t = TopicName::from_kafka(&name, &ns()).unwrap();
            prop_assert_eq!(t.kafka_name(), Some(name.as_str()));
            let mqtt = t.mqtt_topic().unwrap();
            prop_assert_eq!(&TopicName::from_mqtt(&mqtt, &ns()).unwrap(), &t);
            let key = t.amqp_key().unwrap();
            let via_amqp = TopicName::from_amqp_key(&key, &ns()).unwrap();
            prop_assert_eq!(via_amqp, t);
        }

        #[test]
        fn partitions_round_trip(name in "[a-z][a-z0-9.]{0,20}", p in 0u32..100_000) {
            let t = TopicName::from_kafka(&name, &ns()).unwrap();
            let part = t.partition(p);
            prop_assert_eq!(part.partition_index(), Some(p));
            prop_assert_eq!(part.as_str().parse::<TopicName>().unwrap(), part.clone());
            prop_assert_eq!(part.base(), t);
        }
    }
}
