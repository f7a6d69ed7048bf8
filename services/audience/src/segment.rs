//! The segment rule language: a small JSON or YAML document (same
//! structure), validated into a [`Rule`] (errors name
//! the part at fault, `definition.all[1].event.within_days`), compiled to one SQL condition
//! over the audience read model for PostgreSQL or SQLite.
//!
//! ```json
//! {"all": [
//!   {"event": {"name": "Product Viewed", "within_days": 7}},
//!   {"not": {"event": {"name": "Order Completed", "within_days": 7}}},
//!   {"spend": {"currency": "EUR", "at_least": "200.00", "within_days": 90}},
//!   {"trait": {"name": "aipl_stage", "eq": "interest"}},
//!   {"trait": {"name": "rfm_score", "gte": 4}},
//!   {"region": ["DE", "FR", "IT"]},
//!   {"has_identifier": "email"}
//! ]}
//! ```
//!
//! The same rule in YAML (a definition not starting with `{` is read as YAML; errors name
//! the part at fault with the same paths):
//!
//! ```yaml
//! all:
//!   - event: {name: Product Viewed, within_days: 7}
//!   - not:
//!       event: {name: Order Completed, within_days: 7}
//!   - spend: {currency: EUR, at_least: "200.00", within_days: 90}
//!   - trait: {name: aipl_stage, eq: interest}
//!   - trait: {name: rfm_score, gte: 4}
//!   - region: [DE, FR, IT]
//!   - has_identifier: email
//! ```
//!
//! - `all` / `any`: lists of rules (1..=50); `not`: one rule.
//! - `event`: `name`, `within_days` (1..=730, counted in the workspace's time zone: "last 7
//!   days" is today and the 6 local days before), `min_count` (default 1). The flat form
//!   `{"event": "Product Added", "within_days": 7, "count_at_least": 1}` means the same.
//! - `spend`: order value (`Order Completed` revenue) in `currency` (ISO 4217) of at least
//!   `at_least` (a decimal string in major units) within `within_days`.
//! - `trait`: a computed trait (`rfm_segment`, `rfm_score`, `aipl_stage`, …) compared with
//!   exactly one of `eq`, `ne` (text or number), `gt`, `gte`, `lt`, `lte` (number) or
//!   `exists: true`.
//! - `region`: home region in the list; `jurisdiction`: jurisdiction in the list (`FR` also names the EEA jurisdiction `EU-FR`).
//! - `has_identifier`: `email`, `phone`, `device_id`, `customer_id`, …
//!
//! Consent, purpose and transfer are not part of the rule: they are decided per member and
//! destination at send time.

use serde_json::{Map, Value};

/// A part of a definition that is not valid: the path to it and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct RuleError {
    pub path: String,
    pub reason: String,
}

fn err(path: &str, reason: impl Into<String>) -> RuleError {
    RuleError {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Comparison of a trait.
#[derive(Debug, Clone, PartialEq)]
pub enum TraitTest {
    Eq(Scalar),
    Ne(Scalar),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
    Exists,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Text(String),
    Number(f64),
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    All(Vec<Rule>),
    Any(Vec<Rule>),
    Not(Box<Rule>),
    Event {
        name: String,
        within_days: u32,
        min_count: u32,
    },
    Spend {
        currency: String,
        at_least_minor: i64,
        within_days: u32,
    },
    Trait {
        name: String,
        test: TraitTest,
    },
    Region(Vec<String>),
    Jurisdiction(Vec<String>),
    HasIdentifier(String),
}

impl Rule {
    /// Whether the rule reads event aggregates (so a newly counted event can change it).
    pub fn counts_events(&self) -> bool {
        match self {
            Rule::All(rules) | Rule::Any(rules) => rules.iter().any(Rule::counts_events),
            Rule::Not(rule) => rule.counts_events(),
            Rule::Event { .. } | Rule::Spend { .. } => true,
            Rule::Trait { .. }
            | Rule::Region(_)
            | Rule::Jurisdiction(_)
            | Rule::HasIdentifier(_) => false,
        }
    }
}

const MAX_DEPTH: usize = 8;
const MAX_CHILDREN: usize = 50;
const MAX_WINDOW_DAYS: u64 = 730;
const IDENTIFIER_TYPES: &[&str] = &[
    "email",
    "phone",
    "device_id",
    "customer_id",
    "anonymous_id",
    "user_id",
    "click_id",
];

/// Parses and validates a definition, JSON or YAML (same structure). Paths start at
/// `definition`. A definition whose first non-blank character is `{` is read as JSON;
/// anything else as YAML.
pub fn parse(definition: &str) -> Result<Rule, RuleError> {
    let value: Value = if definition.trim_start().starts_with('{') {
        serde_json::from_str(definition)
            .map_err(|e| err("definition", format!("not valid JSON ({e})")))?
    } else {
        from_yaml(definition)?
    };
    rule(&value, "definition", 0)
}

/// Deepest YAML nesting read (a rule nests at most `MAX_DEPTH` levels, two YAML levels
/// each); deeper input is refused before validation.
const MAX_YAML_DEPTH: usize = 2 * MAX_DEPTH + 8;

/// Reads a YAML definition into the JSON value the validator walks, so both forms get
/// the same checks and error paths.
fn from_yaml(definition: &str) -> Result<Value, RuleError> {
    use yaml_rust2::parser::{Event, Parser};
    // A first pass over the events, before anything is built: the loader copies what an
    // alias points to (a few lines could expand to gigabytes) and nests without bound.
    let mut parser = Parser::new_from_str(definition);
    let mut depth = 0usize;
    loop {
        let (event, _) = parser
            .next_token()
            .map_err(|e| err("definition", format!("not valid YAML ({e})")))?;
        match event {
            Event::StreamEnd => break,
            Event::Alias(_) => {
                return Err(err(
                    "definition",
                    "YAML aliases (`*name`) are not supported",
                ));
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_YAML_DEPTH {
                    return Err(err(
                        "definition",
                        format!("nested deeper than {MAX_YAML_DEPTH} levels"),
                    ));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let mut documents = yaml_rust2::YamlLoader::load_from_str(definition)
        .map_err(|e| err("definition", format!("not valid YAML ({e})")))?;
    match documents.len() {
        0 => Err(err("definition", "is empty")),
        1 => yaml_value(documents.remove(0), "definition", 0),
        n => Err(err(
            "definition",
            format!("must be one YAML document, not {n}"),
        )),
    }
}

fn yaml_value(yaml: yaml_rust2::Yaml, path: &str, depth: usize) -> Result<Value, RuleError> {
    use yaml_rust2::Yaml;
    if depth > MAX_YAML_DEPTH {
        return Err(err(
            path,
            format!("nested deeper than {MAX_YAML_DEPTH} levels"),
        ));
    }
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::from(i),
        Yaml::Real(text) => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| err(path, format!("`{text}` is not a finite number")))?,
        Yaml::String(text) => Value::String(text),
        Yaml::Array(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| yaml_value(item, &format!("{path}[{i}]"), depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Hash(entries) => {
            let mut object = Map::new();
            for (key, item) in entries {
                let Yaml::String(key) = key else {
                    return Err(err(path, "keys must be text"));
                };
                let item = yaml_value(item, &format!("{path}.{key}"), depth + 1)?;
                object.insert(key, item);
            }
            Value::Object(object)
        }
        Yaml::Alias(_) => return Err(err(path, "YAML aliases (`*name`) are not supported")),
        Yaml::BadValue => return Err(err(path, "is not a YAML value")),
    })
}

fn single_key<'a>(value: &'a Value, path: &str) -> Result<(&'a str, &'a Value), RuleError> {
    let object = value
        .as_object()
        .ok_or_else(|| err(path, "must be an object with one key naming the rule"))?;
    if object.len() != 1 {
        return Err(err(
            path,
            "must have exactly one key: all, any, not, event, spend, trait, region, jurisdiction or has_identifier",
        ));
    }
    let (key, inner) = object.iter().next().ok_or_else(|| err(path, "empty"))?;
    Ok((key.as_str(), inner))
}

fn rule(value: &Value, path: &str, depth: usize) -> Result<Rule, RuleError> {
    if depth > MAX_DEPTH {
        return Err(err(path, format!("nested deeper than {MAX_DEPTH} levels")));
    }
    // Flat event form: {"event": "Product Added", "within_days": 7, "count_at_least": 1}.
    if let Some(fields) = value.as_object()
        && let Some(Value::String(name)) = fields.get("event")
    {
        let path = format!("{path}.event");
        let allowed = ["event", "within_days", "count_at_least"];
        if let Some(unknown) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(err(
                &format!("{path}.{unknown}"),
                "unknown field (expected within_days, count_at_least)",
            ));
        }
        let mut nested = fields.clone();
        nested.remove("event");
        nested.insert("name".into(), Value::String(name.clone()));
        if let Some(count) = nested.remove("count_at_least") {
            nested.insert("min_count".into(), count);
        }
        return rule(
            &serde_json::json!({ "event": Value::Object(nested) }),
            path.trim_end_matches(".event"),
            depth,
        );
    }
    let (key, inner) = single_key(value, path)?;
    let path = format!("{path}.{key}");
    match key {
        "all" | "any" => {
            let items = inner
                .as_array()
                .ok_or_else(|| err(&path, "must be a list of rules"))?;
            if items.is_empty() || items.len() > MAX_CHILDREN {
                return Err(err(&path, format!("must hold 1 to {MAX_CHILDREN} rules")));
            }
            let rules = items
                .iter()
                .enumerate()
                .map(|(i, item)| rule(item, &format!("{path}[{i}]"), depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if key == "all" {
                Rule::All(rules)
            } else {
                Rule::Any(rules)
            })
        }
        "not" => Ok(Rule::Not(Box::new(rule(inner, &path, depth + 1)?))),
        "event" => {
            let fields = object(inner, &path, &["name", "within_days", "min_count"])?;
            let name = text(fields, "name", &path, 200)?;
            let within_days = window(fields, &path)?;
            let min_count = match fields.get("min_count") {
                None => 1,
                Some(v) => v
                    .as_u64()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| err(&format!("{path}.min_count"), "must be 1..=1000000"))?
                    as u32,
            };
            Ok(Rule::Event {
                name,
                within_days,
                min_count,
            })
        }
        "spend" => {
            let fields = object(inner, &path, &["currency", "at_least", "within_days"])?;
            let currency = text(fields, "currency", &path, 3)?;
            if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(err(
                    &format!("{path}.currency"),
                    "must be an ISO 4217 code (EUR)",
                ));
            }
            let at_least = fields
                .get("at_least")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    err(
                        &format!("{path}.at_least"),
                        "must be a decimal string (\"200.00\")",
                    )
                })?;
            let at_least_minor = minor_units(at_least).ok_or_else(|| {
                err(
                    &format!("{path}.at_least"),
                    "must be a non-negative amount with at most 2 decimals",
                )
            })?;
            Ok(Rule::Spend {
                currency,
                at_least_minor,
                within_days: window(fields, &path)?,
            })
        }
        "trait" => {
            let fields = object(
                inner,
                &path,
                &["name", "eq", "ne", "gt", "gte", "lt", "lte", "exists"],
            )?;
            let name = text(fields, "name", &path, 100)?;
            if !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
            {
                return Err(err(
                    &format!("{path}.name"),
                    "must be lowercase letters, digits, `_` or `.`",
                ));
            }
            let tests: Vec<(&String, &Value)> =
                fields.iter().filter(|(k, _)| *k != "name").collect();
            let [(op, operand)] = tests.as_slice() else {
                return Err(err(
                    &path,
                    "must have exactly one of eq, ne, gt, gte, lt, lte, exists",
                ));
            };
            let op_path = format!("{path}.{op}");
            let number = || {
                operand
                    .as_f64()
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| err(&op_path, "must be a number"))
            };
            let scalar = || match operand {
                Value::String(s) if !s.is_empty() && s.len() <= 200 => Ok(Scalar::Text(s.clone())),
                Value::Number(n) => n
                    .as_f64()
                    .filter(|n| n.is_finite())
                    .map(Scalar::Number)
                    .ok_or_else(|| err(&op_path, "must be a finite number")),
                _ => Err(err(&op_path, "must be a non-empty string or a number")),
            };
            let test = match op.as_str() {
                "eq" => TraitTest::Eq(scalar()?),
                "ne" => TraitTest::Ne(scalar()?),
                "gt" => TraitTest::Gt(number()?),
                "gte" => TraitTest::Gte(number()?),
                "lt" => TraitTest::Lt(number()?),
                "lte" => TraitTest::Lte(number()?),
                _ => {
                    if operand.as_bool() != Some(true) {
                        return Err(err(&op_path, "must be true"));
                    }
                    TraitTest::Exists
                }
            };
            Ok(Rule::Trait { name, test })
        }
        "region" | "jurisdiction" => {
            let codes = inner
                .as_array()
                .filter(|a| !a.is_empty() && a.len() <= 300)
                .ok_or_else(|| err(&path, "must be a list of 1 to 300 codes"))?;
            let codes = codes
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    c.as_str()
                        .filter(|c| {
                            (2..=6).contains(&c.len())
                                && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'-')
                        })
                        .map(str::to_owned)
                        .ok_or_else(|| {
                            err(
                                &format!("{path}[{i}]"),
                                "must be an ISO 3166 code (DE, US-CA)",
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if key == "region" {
                Rule::Region(codes)
            } else {
                // Jurisdictions of EEA member states are `EU-XX` in the policies, and the
                // API accepts `XX` for them (see `common.proto`): so does a rule.
                let mut codes = codes;
                let eea: Vec<String> = codes
                    .iter()
                    .filter(|c| c.len() == 2)
                    .map(|c| format!("EU-{c}"))
                    .collect();
                for code in eea {
                    if !codes.contains(&code) {
                        codes.push(code);
                    }
                }
                Rule::Jurisdiction(codes)
            })
        }
        "has_identifier" => {
            let kind = inner
                .as_str()
                .filter(|k| IDENTIFIER_TYPES.contains(k))
                .ok_or_else(|| {
                    err(
                        &path,
                        format!("must be one of {}", IDENTIFIER_TYPES.join(", ")),
                    )
                })?;
            Ok(Rule::HasIdentifier(kind.to_owned()))
        }
        other => Err(err(&path, format!("unknown rule `{other}`"))),
    }
}

fn object<'a>(
    value: &'a Value,
    path: &str,
    allowed: &[&str],
) -> Result<&'a Map<String, Value>, RuleError> {
    let fields = value
        .as_object()
        .ok_or_else(|| err(path, "must be an object"))?;
    if let Some(unknown) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(err(
            &format!("{path}.{unknown}"),
            format!("unknown field (expected {})", allowed.join(", ")),
        ));
    }
    Ok(fields)
}

fn text(
    fields: &Map<String, Value>,
    key: &str,
    path: &str,
    max: usize,
) -> Result<String, RuleError> {
    fields
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty() && s.len() <= max)
        .map(str::to_owned)
        .ok_or_else(|| {
            err(
                &format!("{path}.{key}"),
                format!("is required: a non-empty string of at most {max} bytes"),
            )
        })
}

fn window(fields: &Map<String, Value>, path: &str) -> Result<u32, RuleError> {
    fields
        .get("within_days")
        .and_then(Value::as_u64)
        .filter(|d| (1..=MAX_WINDOW_DAYS).contains(d))
        .map(|d| d as u32)
        .ok_or_else(|| {
            err(
                &format!("{path}.within_days"),
                format!("is required: 1..={MAX_WINDOW_DAYS} days"),
            )
        })
}

/// `"200"`, `"200.5"`, `"200.50"` → 20050 minor units (two decimals).
fn minor_units(amount: &str) -> Option<i64> {
    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
    if whole.is_empty()
        || fraction.len() > 2
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let fraction: i64 = format!("{fraction:0<2}").parse().ok()?;
    whole.checked_mul(100)?.checked_add(fraction)
}

/// The SQL dialect to compile for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// A bound parameter of a compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    Int(i64),
    Float(f64),
}

/// A rule compiled to a condition on `p` (a row of `audience_profiles`), with its
/// parameters in order. `first_param` is the number of the first placeholder.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRule {
    pub condition: String,
    pub params: Vec<Param>,
}

struct Compiler {
    dialect: Dialect,
    next: usize,
    params: Vec<Param>,
    today: i64,
}

impl Compiler {
    fn bind(&mut self, param: Param) -> String {
        self.params.push(param);
        let placeholder = match self.dialect {
            Dialect::Postgres => format!("${}", self.next),
            Dialect::Sqlite => format!("?{}", self.next),
        };
        self.next += 1;
        placeholder
    }

    fn compile(&mut self, rule: &Rule) -> String {
        const SAME_PROFILE: &str =
            "x.workspace_id = p.workspace_id AND x.profile_id = p.profile_id";
        match rule {
            Rule::All(rules) | Rule::Any(rules) => {
                let joiner = if matches!(rule, Rule::All(_)) {
                    " AND "
                } else {
                    " OR "
                };
                let parts: Vec<String> = rules.iter().map(|r| self.compile(r)).collect();
                format!("({})", parts.join(joiner))
            }
            Rule::Not(inner) => format!("(NOT {})", self.compile(inner)),
            Rule::Event {
                name,
                within_days,
                min_count,
            } => {
                let name = self.bind(Param::Text(name.clone()));
                let since = self.bind(Param::Int(self.today - i64::from(*within_days) + 1));
                let min = self.bind(Param::Int(i64::from(*min_count)));
                format!(
                    "(COALESCE((SELECT SUM(x.event_count) FROM audience_event_days x WHERE {SAME_PROFILE} \
                     AND x.event_name = {name} AND x.local_day >= {since}), 0) >= {min})"
                )
            }
            Rule::Spend {
                currency,
                at_least_minor,
                within_days,
            } => {
                let currency = self.bind(Param::Text(currency.clone()));
                let since = self.bind(Param::Int(self.today - i64::from(*within_days) + 1));
                let min = self.bind(Param::Int(*at_least_minor));
                format!(
                    "(COALESCE((SELECT SUM(x.revenue_minor) FROM audience_event_days x WHERE {SAME_PROFILE} \
                     AND x.currency = {currency} AND x.local_day >= {since}), 0) >= {min})"
                )
            }
            Rule::Trait { name, test } => {
                let name = self.bind(Param::Text(name.clone()));
                let base = format!(
                    "SELECT 1 FROM audience_profile_traits x WHERE {SAME_PROFILE} AND x.name = {name}"
                );
                let scalar = |c: &mut Compiler, s: &Scalar, op: &str| match s {
                    Scalar::Text(t) => {
                        format!("x.text_value {op} {}", c.bind(Param::Text(t.clone())))
                    }
                    Scalar::Number(n) => {
                        format!("x.number_value {op} {}", c.bind(Param::Float(*n)))
                    }
                };
                let number = |c: &mut Compiler, n: f64, op: &str| {
                    format!("x.number_value {op} {}", c.bind(Param::Float(n)))
                };
                match test {
                    TraitTest::Exists => format!("EXISTS ({base})"),
                    TraitTest::Eq(s) => format!("EXISTS ({base} AND {})", scalar(self, s, "=")),
                    // A profile without the trait is "not equal" too.
                    TraitTest::Ne(s) => {
                        format!("(NOT EXISTS ({base} AND {}))", scalar(self, s, "="))
                    }
                    TraitTest::Gt(n) => format!("EXISTS ({base} AND {})", number(self, *n, ">")),
                    TraitTest::Gte(n) => format!("EXISTS ({base} AND {})", number(self, *n, ">=")),
                    TraitTest::Lt(n) => format!("EXISTS ({base} AND {})", number(self, *n, "<")),
                    TraitTest::Lte(n) => format!("EXISTS ({base} AND {})", number(self, *n, "<=")),
                }
            }
            Rule::Region(codes) | Rule::Jurisdiction(codes) => {
                let column = if matches!(rule, Rule::Region(_)) {
                    "p.home_region"
                } else {
                    "p.jurisdiction"
                };
                let list: Vec<String> = codes
                    .iter()
                    .map(|c| self.bind(Param::Text(c.clone())))
                    .collect();
                format!("({column} IN ({}))", list.join(", "))
            }
            Rule::HasIdentifier(kind) => {
                let kind = self.bind(Param::Text(kind.clone()));
                format!(
                    "EXISTS (SELECT 1 FROM audience_profile_identifiers x WHERE {SAME_PROFILE} AND x.identifier_type = {kind})"
                )
            }
        }
    }
}

/// Compiles `rule` for `dialect`; windows end on `today` (local day number in the
/// workspace's time zone); placeholders start at `first_param`.
pub fn compile(rule: &Rule, dialect: Dialect, today: i64, first_param: usize) -> CompiledRule {
    let mut compiler = Compiler {
        dialect,
        next: first_param,
        params: Vec::new(),
        today,
    };
    let condition = compiler.compile(rule);
    CompiledRule {
        condition,
        params: compiler.params,
    }
}

/// The local day number (days since 1970-01-01) of `at` in `zone`.
pub fn local_day(at: chrono::DateTime<chrono::Utc>, zone: chrono_tz::Tz) -> i64 {
    let local = at.with_timezone(&zone).date_naive();
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    (local - epoch).num_days()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let rule = parse(
            r#"{"all": [
              {"event": {"name": "Product Viewed", "within_days": 7}},
              {"not": {"event": {"name": "Order Completed", "within_days": 7}}},
              {"spend": {"currency": "EUR", "at_least": "200.00", "within_days": 90}},
              {"trait": {"name": "aipl_stage", "eq": "interest"}},
              {"trait": {"name": "rfm_score", "gte": 4}},
              {"region": ["DE", "FR", "IT"]},
              {"has_identifier": "email"}
            ]}"#,
        )
        .unwrap();
        let Rule::All(parts) = &rule else {
            panic!("all")
        };
        assert_eq!(parts.len(), 7);
        assert_eq!(
            parts[2],
            Rule::Spend {
                currency: "EUR".into(),
                at_least_minor: 20_000,
                within_days: 90
            }
        );
        let compiled = compile(&rule, Dialect::Postgres, 20_000, 2);
        assert!(compiled.condition.contains("$2"));
        assert_eq!(compiled.params[1], Param::Int(20_000 - 7 + 1));
        let sqlite = compile(&rule, Dialect::Sqlite, 20_000, 2);
        assert!(sqlite.condition.contains("?2") && !sqlite.condition.contains('$'));
    }

    #[test]
    fn the_flat_event_form_means_the_same() {
        let flat = parse(
            r#"{"all": [{"event": "Product Added", "within_days": 7, "count_at_least": 2},
                       {"not": {"event": "Order Completed", "within_days": 7}}]}"#,
        )
        .unwrap();
        let nested = parse(
            r#"{"all": [{"event": {"name": "Product Added", "within_days": 7, "min_count": 2}},
                       {"not": {"event": {"name": "Order Completed", "within_days": 7}}}]}"#,
        )
        .unwrap();
        assert_eq!(flat, nested);
        let error = parse(r#"{"event": "x", "within_days": 0}"#).unwrap_err();
        assert_eq!(error.path, "definition.event.within_days");
        let error = parse(r#"{"event": "x", "within_days": 3, "colour": 1}"#).unwrap_err();
        assert_eq!(error.path, "definition.event.colour");
    }

    #[test]
    fn errors_name_the_part_at_fault() {
        let cases = [
            ("{", "definition"),
            (r#"{"all": []}"#, "definition.all"),
            (
                r#"{"all": [{"event": {"name": "x", "within_days": 0}}]}"#,
                "definition.all[0].event.within_days",
            ),
            (
                r#"{"any": [{"region": ["DE"]}, {"trait": {"name": "rfm", "gt": "high"}}]}"#,
                "definition.any[1].trait.gt",
            ),
            (
                r#"{"not": {"spend": {"currency": "eur", "at_least": "1", "within_days": 3}}}"#,
                "definition.not.spend.currency",
            ),
            (
                r#"{"event": {"name": "x", "within_days": 3, "color": 1}}"#,
                "definition.event.color",
            ),
            (r#"{"has_identifier": "ssn"}"#, "definition.has_identifier"),
            (r#"{"bogus": 1}"#, "definition.bogus"),
            (
                r#"{"spend": {"currency": "EUR", "at_least": "1.234", "within_days": 3}}"#,
                "definition.spend.at_least",
            ),
        ];
        for (definition, path) in cases {
            let error = parse(definition).unwrap_err();
            assert_eq!(error.path, path, "{definition}: {error}");
        }
    }

    /// The YAML example of the module docs is the JSON example.
    const DOCUMENTED_YAML: &str = "
all:
  - event: {name: Product Viewed, within_days: 7}
  - not:
      event: {name: Order Completed, within_days: 7}
  - spend: {currency: EUR, at_least: \"200.00\", within_days: 90}
  - trait: {name: aipl_stage, eq: interest}
  - trait: {name: rfm_score, gte: 4}
  - region: [DE, FR, IT]
  - has_identifier: email
";

    #[test]
    fn yaml_means_the_same_as_json() {
        let json = parse(
            r#"{"all": [
              {"event": {"name": "Product Viewed", "within_days": 7}},
              {"not": {"event": {"name": "Order Completed", "within_days": 7}}},
              {"spend": {"currency": "EUR", "at_least": "200.00", "within_days": 90}},
              {"trait": {"name": "aipl_stage", "eq": "interest"}},
              {"trait": {"name": "rfm_score", "gte": 4}},
              {"region": ["DE", "FR", "IT"]},
              {"has_identifier": "email"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(parse(DOCUMENTED_YAML).unwrap(), json);
        // Flat event form, block style, and numbers written as YAML floats.
        assert_eq!(
            parse("event: Product Added\nwithin_days: 7\ncount_at_least: 2\n").unwrap(),
            parse(r#"{"event": {"name": "Product Added", "within_days": 7, "min_count": 2}}"#)
                .unwrap()
        );
        assert_eq!(
            parse("trait:\n  name: rfm_score\n  gte: 4.5\n").unwrap(),
            Rule::Trait {
                name: "rfm_score".into(),
                test: TraitTest::Gte(4.5)
            }
        );
    }

    #[test]
    fn yaml_errors_name_the_part_at_fault() {
        let cases = [
            ("all: [\n", "definition"),
            ("", "definition"),
            ("a: 1\n---\nb: 2\n", "definition"),
            ("all: []", "definition.all"),
            (
                "all:\n  - event: {name: x, within_days: 0}\n",
                "definition.all[0].event.within_days",
            ),
            (
                "any:\n  - region: [DE]\n  - trait: {name: rfm, gt: high}\n",
                "definition.any[1].trait.gt",
            ),
            (
                "not:\n  spend: {currency: eur, at_least: \"1\", within_days: 3}\n",
                "definition.not.spend.currency",
            ),
            (
                "event: {name: x, within_days: 3, color: 1}",
                "definition.event.color",
            ),
            ("has_identifier: ssn", "definition.has_identifier"),
            ("bogus: 1", "definition.bogus"),
            (
                "trait: {name: rfm_score, gte: .nan}",
                "definition.trait.gte",
            ),
            ("trait: {name: rfm_score, 4: 1}", "definition.trait"),
            ("all:\n  - &a {region: [DE]}\n  - *a\n", "definition"),
            ("- region: [DE]", "definition"),
        ];
        for (definition, path) in cases {
            let error = parse(definition).unwrap_err();
            assert_eq!(error.path, path, "{definition}: {error}");
        }
        assert!(
            parse("all: [\n")
                .unwrap_err()
                .reason
                .starts_with("not valid YAML")
        );
        assert!(
            parse("all:\n  - &a {region: [DE]}\n  - *a\n")
                .unwrap_err()
                .reason
                .contains("aliases")
        );
        // Deep nesting is refused, not recursed into (block style as well as flow).
        let block: String = (0..40).map(|i| format!("{}- \n", "  ".repeat(i))).collect();
        assert!(parse(&block).unwrap_err().reason.contains("nested deeper"));
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(parse(&deep).unwrap_err().path, "definition");
    }

    #[test]
    fn local_days_follow_the_workspace_time_zone() {
        use chrono::TimeZone;
        // 23:30 UTC on 2026-03-01 is already 2026-03-02 in Paris.
        let at = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 23, 30, 0).unwrap();
        let utc = local_day(at, chrono_tz::UTC);
        assert_eq!(local_day(at, chrono_tz::Europe::Paris), utc + 1);
        assert_eq!(local_day(at, chrono_tz::America::Los_Angeles), utc);
    }

    #[test]
    fn a_country_code_names_its_eea_jurisdiction_too() {
        assert_eq!(
            parse(r#"{"jurisdiction": ["FR", "US-CA", "EU-DE"]}"#).unwrap(),
            Rule::Jurisdiction(vec![
                "FR".into(),
                "US-CA".into(),
                "EU-DE".into(),
                "EU-FR".into()
            ])
        );
        assert_eq!(
            parse(r#"{"region": ["FR"]}"#).unwrap(),
            Rule::Region(vec!["FR".into()])
        );
    }
}
