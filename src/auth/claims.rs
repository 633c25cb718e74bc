//! Verified JWT claims and the route requirements checked against them.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

pub use crate::policy::ClaimRequirement;

/// The top-level claims of a verified token.
///
/// Deserialisation refuses duplicate top-level names: `{"sub":"alice","sub":"admin"}` means
/// different things to different parsers, so it is not a token we accept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims(Map<String, Value>);

impl Claims {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub fn from_map(map: Map<String, Value>) -> Self {
        Claims(map)
    }

    /// `sub` when it is a string.
    pub fn subject(&self) -> Option<&str> {
        self.get("sub").and_then(Value::as_str)
    }

    /// True when every scope is granted by `scope` (space-delimited) or `scp` (array, or a
    /// space-delimited string as some IdPs send it).
    pub fn has_scopes(&self, scopes: &[Box<str>]) -> bool {
        scopes.iter().all(|wanted| self.grants_scope(wanted))
    }

    fn grants_scope(&self, wanted: &str) -> bool {
        let in_string = |v: &Value| {
            v.as_str()
                .is_some_and(|s| s.split(' ').any(|granted| granted == wanted))
        };
        let in_scope = self.get("scope").is_some_and(in_string);
        let in_scp = self.get("scp").is_some_and(|v| match v {
            Value::Array(items) => items.iter().any(|i| i.as_str() == Some(wanted)),
            other => in_string(other),
        });
        in_scope || in_scp
    }
}

impl ClaimRequirement {
    /// The claim equals one accepted value, or is an array containing one.
    pub fn holds(&self, claims: &Claims) -> bool {
        match claims.get(&self.name) {
            Some(Value::Array(items)) => items.iter().any(|i| self.accepts(i)),
            Some(value) => self.accepts(value),
            None => false,
        }
    }

    fn accepts(&self, value: &Value) -> bool {
        let matches = |text: &str| self.accepted.iter().any(|a| &**a == text);
        match value {
            Value::String(s) => matches(s),
            Value::Bool(b) => matches(if *b { "true" } else { "false" }),
            Value::Number(n) => matches(&n.to_string()),
            Value::Null | Value::Array(_) | Value::Object(_) => false,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NoDuplicates;
        impl<'de> Visitor<'de> for NoDuplicates {
            type Value = Claims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Claims, A::Error> {
                let mut map = Map::new();
                while let Some((key, value)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&key) {
                        return Err(de::Error::custom("duplicate claim"));
                    }
                    map.insert(key, value);
                }
                Ok(Claims(map))
            }
        }
        deserializer.deserialize_map(NoDuplicates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        serde_json::from_value(v).expect("claims")
    }

    #[test]
    fn duplicate_claims_are_refused() {
        let err = serde_json::from_str::<Claims>(r#"{"sub":"alice","sub":"admin"}"#);
        assert!(err.is_err());
        assert!(serde_json::from_str::<Claims>(r#"{"sub":"alice"}"#).is_ok());
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let want: Vec<Box<str>> = vec!["crm.read".into(), "crm.write".into()];
        assert!(claims(json!({"scope": "openid crm.read crm.write"})).has_scopes(&want));
        assert!(claims(json!({"scp": ["crm.read", "crm.write"]})).has_scopes(&want));
        assert!(claims(json!({"scp": "crm.read crm.write"})).has_scopes(&want));
        assert!(!claims(json!({"scope": "crm.read"})).has_scopes(&want));
        assert!(!claims(json!({"scope": "crm.readx crm.write"})).has_scopes(&want));
        assert!(!claims(json!({})).has_scopes(&want));
        assert!(claims(json!({})).has_scopes(&[]));
    }

    #[test]
    fn claim_requirements_match_values_and_arrays() {
        let req = ClaimRequirement {
            name: "role".into(),
            accepted: vec!["admin".into(), "sales".into()].into(),
        };
        assert!(req.holds(&claims(json!({"role": "sales"}))));
        assert!(req.holds(&claims(json!({"role": ["eng", "admin"]}))));
        assert!(!req.holds(&claims(json!({"role": "eng"}))));
        assert!(!req.holds(&claims(json!({"role": ["eng,admin"]}))));
        assert!(!req.holds(&claims(json!({}))));
        let flag = ClaimRequirement {
            name: "admin".into(),
            accepted: vec!["true".into()].into(),
        };
        assert!(flag.holds(&claims(json!({"admin": true}))));
        assert!(!flag.holds(&claims(json!({"admin": "yes"}))));
    }
}
