//! The IVS Real-Time service model as data, and the validator that enforces it.
//!
//! `generated.rs` is derived from the AWS service model by `tools/gen-model.py`; it
//! holds every operation, shape, member and constraint. [`validate`] walks a request
//! document against an input shape so that every constraint of the model is enforced
//! in one place, before any handler runs, with AWS's wording and the field's path.

mod generated;

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

pub use generated::{OPERATIONS, SHAPES, shape_index};

#[derive(Debug)]
pub struct Shape {
    pub name: &'static str,
    pub kind: ShapeKind,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub pattern: Option<&'static str>,
    pub enum_values: &'static [&'static str],
}

#[derive(Debug)]
pub enum ShapeKind {
    Structure(&'static [Member]),
    List(usize),
    Map { key: usize, value: usize },
    String,
    Integer,
    Boolean,
    Timestamp,
    Float,
}

#[derive(Debug)]
pub struct Member {
    pub name: &'static str,
    pub shape: usize,
    pub required: bool,
    pub location: Location,
}

/// Where a member travels in the HTTP request.
#[derive(Debug, PartialEq, Eq)]
pub enum Location {
    Body,
    Uri(&'static str),
    Query(&'static str),
    Header(&'static str),
}

#[derive(Debug)]
pub struct Operation {
    pub name: &'static str,
    pub method: &'static str,
    pub uri: &'static str,
    pub input: Option<usize>,
    pub output: Option<usize>,
}

pub fn operation(name: &str) -> Option<&'static Operation> {
    OPERATIONS.iter().find(|o| o.name == name)
}

/// A request document that does not satisfy the model.
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    /// A member has the wrong JSON type: the body cannot be read as the shape.
    Type(String),
    /// Constraint violations, in AWS's wording.
    Constraints(Vec<String>),
}

fn patterns() -> &'static [Option<Regex>] {
    static PATTERNS: OnceLock<Vec<Option<Regex>>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        SHAPES
            .iter()
            .map(|s| {
                // The model's patterns must match the whole value.
                s.pattern.and_then(|p| Regex::new(&format!(r"\A(?s:{p})\z")).ok())
            })
            .collect()
    })
}

/// Compiles every pattern now, so that a bad one fails at start-up, not mid-request.
pub fn warm_up() -> usize {
    patterns().iter().filter(|p| p.is_some()).count()
}

/// Checks `doc` against the input shape `shape`. Null members count as absent.
pub fn validate(shape: usize, doc: &Value) -> Result<(), Invalid> {
    let mut errors = Vec::new();
    check(shape, doc, "", &mut errors)?;
    if errors.is_empty() { Ok(()) } else { Err(Invalid::Constraints(errors)) }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

fn type_error(path: &str, expected: &str, v: &Value) -> Invalid {
    let at = if path.is_empty() { "the request body".to_owned() } else { format!("'{path}'") };
    Invalid::Type(format!("Expected {expected} for {at}, got a {}", describe(v)))
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") }
}

fn check(shape_idx: usize, v: &Value, path: &str, errors: &mut Vec<String>) -> Result<(), Invalid> {
    let shape = &SHAPES[shape_idx];
    match &shape.kind {
        ShapeKind::Structure(members) => {
            let obj = v.as_object().ok_or_else(|| type_error(path, "an object", v))?;
            for m in members.iter() {
                let mp = join(path, m.name);
                match obj.get(m.name) {
                    None | Some(Value::Null) => {
                        if m.required {
                            errors.push(format!("Value null at '{mp}' failed to satisfy constraint: Member must not be null"));
                        }
                    }
                    Some(mv) => check(m.shape, mv, &mp, errors)?,
                }
            }
        }
        ShapeKind::List(member) => {
            let items = v.as_array().ok_or_else(|| type_error(path, "a list", v))?;
            check_size(shape, items.len(), path, "length", errors);
            for (i, item) in items.iter().enumerate() {
                check(*member, item, &format!("{path}.{}", i + 1), errors)?;
            }
        }
        ShapeKind::Map { key, value } => {
            let obj = v.as_object().ok_or_else(|| type_error(path, "a map", v))?;
            check_size(shape, obj.len(), path, "length", errors);
            for (k, mv) in obj {
                check(*key, &Value::String(k.clone()), &format!("{path}.key"), errors)?;
                check(*value, mv, &format!("{path}.{k}"), errors)?;
            }
        }
        ShapeKind::String => {
            let s = v.as_str().ok_or_else(|| type_error(path, "a string", v))?;
            check_size(shape, s.chars().count(), path, "length", errors);
            if let Some(re) = &patterns()[shape_idx] {
                if !re.is_match(s) {
                    errors.push(format!(
                        "Value '{}' at '{path}' failed to satisfy constraint: Member must satisfy regular expression pattern: {}",
                        clip(s),
                        shape.pattern.unwrap_or_default()
                    ));
                }
            }
            if !shape.enum_values.is_empty() && !shape.enum_values.contains(&s) {
                errors.push(format!(
                    "Value '{}' at '{path}' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                    clip(s),
                    shape.enum_values.join(", ")
                ));
            }
        }
        ShapeKind::Integer => {
            let n = v.as_i64().ok_or_else(|| type_error(path, "an integer", v))?;
            check_range(shape, n as f64, &n.to_string(), path, errors);
        }
        ShapeKind::Float => {
            let n = v.as_f64().ok_or_else(|| type_error(path, "a number", v))?;
            check_range(shape, n, &n.to_string(), path, errors);
        }
        ShapeKind::Boolean => {
            v.as_bool().ok_or_else(|| type_error(path, "a boolean", v))?;
        }
        ShapeKind::Timestamp => {
            if !(v.is_string() || v.is_number()) {
                return Err(type_error(path, "a timestamp", v));
            }
        }
    }
    Ok(())
}

fn clip(s: &str) -> String {
    if s.chars().count() > 64 { format!("{}...", s.chars().take(64).collect::<String>()) } else { s.to_owned() }
}

fn check_size(shape: &Shape, n: usize, path: &str, what: &str, errors: &mut Vec<String>) {
    let n = n as i64;
    if let Some(min) = shape.min {
        if n < min {
            errors.push(format!(
                "Value at '{path}' failed to satisfy constraint: Member must have {what} greater than or equal to {min}"
            ));
        }
    }
    if let Some(max) = shape.max {
        if n > max {
            errors.push(format!(
                "Value at '{path}' failed to satisfy constraint: Member must have {what} less than or equal to {max}"
            ));
        }
    }
}

fn check_range(shape: &Shape, n: f64, shown: &str, path: &str, errors: &mut Vec<String>) {
    if let Some(min) = shape.min {
        if n < min as f64 {
            errors.push(format!(
                "Value '{shown}' at '{path}' failed to satisfy constraint: Member must have value greater than or equal to {min}"
            ));
        }
    }
    if let Some(max) = shape.max {
        if n > max as f64 {
            errors.push(format!(
                "Value '{shown}' at '{path}' failed to satisfy constraint: Member must have value less than or equal to {max}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(op: &str) -> usize {
        operation(op).and_then(|o| o.input).unwrap()
    }

    #[test]
    fn every_pattern_compiles() {
        let declared = SHAPES.iter().filter(|s| s.pattern.is_some()).count();
        assert_eq!(warm_up(), declared);
    }

    #[test]
    fn patterns_match_the_whole_value() {
        let err = validate(input("CreateStage"), &json!({"name": "ok name"})).unwrap_err();
        assert!(matches!(err, Invalid::Constraints(ref e) if e[0].contains("'name'")), "{err:?}");
        assert!(validate(input("CreateStage"), &json!({"name": "ok-name_1"})).is_ok());
    }

    #[test]
    fn resource_arn_pattern_is_the_corrected_one() {
        let op = input("ListTagsForResource");
        // The model's own pattern allows one character before the `/`, refusing every
        // real ARN; the corrected one takes the resource type.
        assert!(validate(op, &json!({"resourceArn": "arn:aws:ivs:us-east-1:0:Stage/abc"})).is_err());
        assert!(validate(op, &json!({"resourceArn": "arn:aws:ivs:us-east-1:0:stage/abc extra"})).is_err());
        assert!(validate(op, &json!({"resourceArn": "arn:aws:ivs:us-east-1:000000000000:stage/abc"})).is_ok());
    }

    #[test]
    fn reports_nested_paths_and_types() {
        let err = validate(
            input("CreateStage"),
            &json!({"participantTokenConfigurations": [{"duration": 0}]}),
        )
        .unwrap_err();
        assert!(matches!(err, Invalid::Constraints(ref e) if e[0].contains("'participantTokenConfigurations.1.duration'")));
        let err = validate(input("CreateParticipantToken"), &json!({"stageArn": 5})).unwrap_err();
        assert!(matches!(err, Invalid::Type(_)));
    }

    #[test]
    fn required_members() {
        let err = validate(input("GetStage"), &json!({})).unwrap_err();
        assert_eq!(
            err,
            Invalid::Constraints(vec!["Value null at 'arn' failed to satisfy constraint: Member must not be null".into()])
        );
    }
}
