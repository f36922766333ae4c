//! Configuration files: TOML, overridable by environment variables, with
//! errors that name the file and the field.
//!
//! An override `GRIDPOW_RELAY__MQTT__BROKER=mqtts://h:8883` sets `mqtt.broker`
//! of a config loaded with prefix `GRIDPOW_RELAY`: after the prefix, `__`
//! separates nested keys, and keys are lower-cased. Values parse as TOML
//! (numbers, booleans, arrays) and fall back to strings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Parser message with line and column.
        message: String,
    },
    /// A field is missing or has a wrong type or value.
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        /// The file (or the environment variable that overrode it).
        path: PathBuf,
        /// Dotted field path.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// An invalid-field error.
    pub fn invalid(path: &Path, field: &str, message: String) -> Self {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        }
    }

    /// An IO error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ConfigError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads `path` as TOML into `T`, applying environment overrides under `env_prefix`.
pub fn load_toml<T: DeserializeOwned>(
    path: &Path,
    env_prefix: Option<&str>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, e))?;
    parse_toml(&text, path, env_prefix, std::env::vars())
}

/// Parses TOML text (named `path` in errors) into `T` with overrides from `vars`.
pub fn parse_toml<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    env_prefix: Option<&str>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut value: toml::Value = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut overridden = Vec::new();
    if let Some(prefix) = env_prefix {
        let lead = format!("{prefix}__");
        for (k, v) in vars {
            let Some(rest) = k.strip_prefix(&lead) else {
                continue;
            };
            let keys: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            set_path(&mut value, &keys, parse_env_value(&v));
            overridden.push((keys.join("."), k));
        }
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let from_env = overridden
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, var)| var.clone());
        ConfigError::Invalid {
            path: match from_env {
                Some(var) => PathBuf::from(format!("{} (overridden by ${var})", path.display())),
                None => path.to_path_buf(),
            },
            field,
            message: e.into_inner().to_string(),
        }
    })
}

fn parse_env_value(v: &str) -> toml::Value {
    // Parse as a TOML value by wrapping it in a one-key document.
    toml::from_str::<toml::Table>(&format!("v = {v}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(v.to_string()))
}

fn set_path(root: &mut toml::Value, keys: &[String], v: toml::Value) {
    let Some((last, parents)) = keys.split_last() else {
        return;
    };
    let mut cur = root;
    for k in parents {
        let toml::Value::Table(t) = cur else { return };
        cur = t
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    if let toml::Value::Table(t) = cur {
        t.insert(last.clone(), v);
    }
}

/// The lines of an [`example_toml`] text that set a field or open a table
/// without a comment line right above them (what its tests want empty).
pub fn undocumented_lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut prev = "";
    for line in text.lines() {
        let field = !line.starts_with(['#', ' ', ']']) && line.contains(" = ");
        if (field || line.starts_with('[')) && !prev.starts_with('#') {
            out.push(line);
        }
        prev = line;
    }
    out
}

/// `value` (a configuration with its defaults) as TOML with each field's
/// documentation as comments: [`field_docs`] of `source`, the Rust file
/// that defines the structs named in `sections`, and [`commented_toml`].
pub fn example_toml<T: serde::Serialize>(
    value: &T,
    source: &str,
    sections: &[(&str, &str)],
) -> Result<String, ConfigError> {
    let text = toml::to_string_pretty(value)
        .map_err(|e| ConfigError::invalid(Path::new("(defaults)"), "", e.to_string()))?;
    Ok(commented_toml(&text, &field_docs(source, sections)))
}

/// The documentation of each configuration field, read from the doc
/// comments of the Rust source that defines the configuration structs
/// (`include_str!` of it): for each `pub struct NAME` listed in `sections`
/// with its TOML section (`""` for the top level), each `pub field:` gets
/// the `///` lines above it. So `gridpow example-config` comments every
/// field with the very text the code documents it with, and cannot drift.
pub fn field_docs(source: &str, sections: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    let mut docs = BTreeMap::new();
    let mut section: Option<&str> = None;
    let mut pending: Vec<String> = Vec::new();
    for line in source.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("pub struct ") {
            let name = rest
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next();
            section = sections
                .iter()
                .find(|(s, _)| Some(*s) == name)
                .map(|(_, sec)| *sec);
            pending.clear();
        } else if t == "}" && line.starts_with('}') {
            section = None;
        } else if let Some(doc) = t.strip_prefix("///") {
            pending.push(doc.trim().to_string());
        } else if let (Some(sec), Some(rest)) = (section, t.strip_prefix("pub ")) {
            if let Some((field, _)) = rest.split_once(':') {
                let key = if sec.is_empty() {
                    field.to_string()
                } else {
                    format!("{sec}.{field}")
                };
                docs.insert(key, std::mem::take(&mut pending));
            }
        } else if !t.starts_with("#[") {
            pending.clear();
        }
    }
    docs
}

/// `toml` (a configuration serialized with its defaults) with each field's
/// documentation from `docs` ([`field_docs`]) as `#` lines above it, and
/// each documented field that is unset (absent from `toml`) as a commented
/// `# field = …` line at the end of its section.
pub fn commented_toml(toml: &str, docs: &BTreeMap<String, Vec<String>>) -> String {
    fn doc_lines(out: &mut String, lines: &[String]) {
        for l in lines {
            out.push_str(if l.is_empty() { "#" } else { "# " });
            out.push_str(l);
            out.push('\n');
        }
    }
    let mut out = String::new();
    let mut section = String::new();
    let mut seen: std::collections::BTreeSet<String> = Default::default();
    let unset = |section: &str, seen: &std::collections::BTreeSet<String>, out: &mut String| {
        for (key, lines) in docs {
            let (sec, field) = key.rsplit_once('.').unwrap_or(("", key));
            if sec == section
                && !seen.contains(key)
                && !docs.keys().any(|k| k.starts_with(&format!("{key}.")))
            {
                doc_lines(out, lines);
                out.push_str(&format!("# {field} = (unset)\n"));
            }
        }
    };
    for line in toml.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            // The previous section's unset fields go before its blank line.
            let blank = out.ends_with("\n\n");
            if blank {
                out.pop();
            }
            unset(&section, &seen, &mut out);
            if blank {
                out.push('\n');
            }
            section = name.to_string();
            if let Some(lines) = docs.get(name) {
                doc_lines(&mut out, lines);
            }
        } else if let Some((key, _)) = line.split_once(" = ") {
            if !key.starts_with(' ') && !key.is_empty() {
                let full = if section.is_empty() {
                    key.to_string()
                } else {
                    format!("{section}.{key}")
                };
                if let Some(lines) = docs.get(&full) {
                    doc_lines(&mut out, lines);
                }
                seen.insert(full);
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    unset(&section, &seen, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Cfg {
        name: String,
        mqtt: Mqtt,
    }
    #[derive(Debug, Deserialize, PartialEq)]
    struct Mqtt {
        port: u16,
        #[serde(default)]
        tls: bool,
    }

    #[test]
    fn environment_overrides_nested_fields() {
        let vars = vec![
            ("GRIDPOW_X__MQTT__PORT".to_string(), "8883".to_string()),
            ("GRIDPOW_X__MQTT__TLS".to_string(), "true".to_string()),
            ("OTHER".to_string(), "1".to_string()),
        ];
        let c: Cfg = parse_toml(
            "name = \"a\"\n[mqtt]\nport = 1883\n",
            Path::new("x.toml"),
            Some("GRIDPOW_X"),
            vars,
        )
        .unwrap();
        assert_eq!(
            c,
            Cfg {
                name: "a".into(),
                mqtt: Mqtt {
                    port: 8883,
                    tls: true
                }
            }
        );
    }

    #[test]
    fn wrong_field_type_names_file_and_field() {
        let e = parse_toml::<Cfg>(
            "name = \"a\"\n[mqtt]\nport = \"high\"\n",
            Path::new("relay.toml"),
            None,
            vec![],
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("relay.toml") && s.contains("mqtt.port"), "{s}");
    }

    #[test]
    fn bad_override_names_the_variable() {
        let vars = vec![("GRIDPOW_X__MQTT__PORT".to_string(), "99999".to_string())];
        let e = parse_toml::<Cfg>(
            "name = \"a\"\n[mqtt]\nport = 1\n",
            Path::new("x.toml"),
            Some("GRIDPOW_X"),
            vars,
        )
        .unwrap_err();
        assert!(e.to_string().contains("$GRIDPOW_X__MQTT__PORT"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let e = parse_toml::<Cfg>("name = ", Path::new("s.toml"), None, vec![]).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }) && e.to_string().contains("s.toml"));
    }

    const SOURCE: &str = r#"
/// The top.
#[derive(Debug)]
pub struct Top {
    /// A name.
    pub name: String,
    /// The broker.
    ///
    /// Second paragraph.
    pub mqtt: Mqtt,
    pub undocumented: u8,
}

/// Not a configuration.
pub struct Other {
    /// Ignored.
    pub x: u8,
}

pub struct Mqtt {
    /// Broker port.
    pub port: u16,
    /// CA file; default none.
    pub ca: Option<String>,
}
"#;

    #[test]
    fn field_docs_come_from_the_doc_comments_of_the_listed_structs() {
        let docs = field_docs(SOURCE, &[("Top", ""), ("Mqtt", "mqtt")]);
        assert_eq!(docs["name"], vec!["A name."]);
        assert_eq!(docs["mqtt"], vec!["The broker.", "", "Second paragraph."]);
        assert_eq!(docs["mqtt.port"], vec!["Broker port."]);
        assert!(docs["undocumented"].is_empty());
        assert!(!docs.contains_key("x") && !docs.contains_key("other.x"));
    }

    #[test]
    fn commented_toml_puts_each_doc_above_its_field_and_lists_unset_ones() {
        let docs = field_docs(SOURCE, &[("Top", ""), ("Mqtt", "mqtt")]);
        let out = commented_toml("name = \"a\"\n\n[mqtt]\nport = 8883\n", &docs);
        assert_eq!(
            out,
            "# A name.\nname = \"a\"\n# undocumented = (unset)\n\n# The broker.\n#\n# Second paragraph.\n[mqtt]\n# Broker port.\nport = 8883\n# CA file; default none.\n# ca = (unset)\n"
        );
    }
}
