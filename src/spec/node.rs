//! A generic YAML tree that remembers where every key and value came from, so that spec errors can say
//! `file:line:col`. Parsed with serde-saphyr (its [`serde_saphyr::Spanned`] wrapper gives the positions);
//! `--set` overrides are spliced into the tree before the typed spec is read from it.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Where a node came from: a position in the spec file or a `--set` override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// 1-based line and column in the spec file (0 = unknown).
    File { line: u64, col: u64 },
    /// A `--set KEY=VALUE` override.
    Override(String),
}

/// A YAML value with its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub origin: Origin,
    pub value: Value,
}

/// The value of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order: key, the key's origin, value.
    Map(Vec<(String, Origin, Node)>),
}

impl Value {
    /// A short name of the value's YAML type for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The value as it would be written in a message.
    pub fn display(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => format!("{s:?}"),
            Value::Seq(_) => "[...]".into(),
            Value::Map(_) => "{...}".into(),
        }
    }
}

impl Node {
    /// A node without position (filled by the caller).
    pub fn new(value: Value) -> Self {
        Node {
            origin: Origin::File { line: 0, col: 0 },
            value,
        }
    }

    /// Set `origin` on this node and everything below it.
    pub fn set_origin(&mut self, origin: &Origin) {
        self.origin = origin.clone();
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|n| n.set_origin(origin)),
            Value::Map(entries) => entries.iter_mut().for_each(|(_, o, n)| {
                *o = origin.clone();
                n.set_origin(origin)
            }),
            _ => {}
        }
    }
}

/// The raw tree: each value knows its position (the positions are attached by [`SpannedNode`]).
struct RawNode(Value);

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor).map(RawNode)
    }
}

/// A node deserialized together with its position.
pub(crate) struct SpannedNode(pub Node);

impl<'de> Deserialize<'de> for SpannedNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<RawNode>::deserialize(d)?;
        Ok(SpannedNode(Node {
            origin: Origin::File {
                line: s.referenced.line(),
                col: s.referenced.column(),
            },
            value: s.value.0,
        }))
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v as i128))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v as i128))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i128::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(SpannedNode(n)) = seq.next_element::<SpannedNode>()? {
            items.push(n);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries: Vec<(String, Origin, Node)> = Vec::new();
        // Duplicate check in O(1) per key: a hostile spec may hold hundreds of thousands of keys.
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let origin = Origin::File {
                line: key.referenced.line(),
                col: key.referenced.column(),
            };
            let SpannedNode(value) = map.next_value::<SpannedNode>()?;
            if !seen.insert(key.value.clone()) {
                return Err(de::Error::custom(format!(
                    "duplicate key `{}` at line {} column {}",
                    key.value,
                    key.referenced.line(),
                    key.referenced.column()
                )));
            }
            entries.push((key.value, origin, value));
        }
        Ok(Value::Map(entries))
    }
}

/// Parse a YAML document into a [`Node`] tree. Errors carry serde-saphyr's position.
pub fn parse(text: &str) -> Result<Node, (Option<(u64, u64)>, String)> {
    match serde_saphyr::from_str::<SpannedNode>(text) {
        Ok(SpannedNode(n)) => Ok(n),
        Err(e) => {
            let loc = e.location().map(|l| (l.line(), l.column()));
            Err((loc, e.to_string()))
        }
    }
}
