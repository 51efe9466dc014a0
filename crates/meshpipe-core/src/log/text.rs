//! The human log format: one pino-shaped JSON line rendered as
//! `12:34:56.789Z DEBUG connected component=engine conn=3 target=10.0.0.5:3306`.
//!
//! The TypeScript layer renders its own lines with the same rules
//! (`ts/observe/log-format.ts`), so a terminal shows one format whoever
//! wrote the line: the time of day (UTC), the level in capitals, the
//! message, then every other field as `key=value` in the order written
//! (`level`, `time`, `pid` and `name` are left out), strings quoted only when
//! they need it, a `hint` on a line of its own.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// A JSON object's members in the order they were written.
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    out.push(entry);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(Members)
    }
}

const LEFT_OUT: [&str; 5] = ["level", "time", "pid", "name", "msg"];

/// Renders one JSON line (with its newline) as text (with a newline). A line
/// that is not a JSON object is returned as it was.
pub fn render(json: &str) -> String {
    let Ok(Ordered(members)) = serde_json::from_str::<Ordered>(json.trim_end()) else {
        return json.to_string();
    };
    let get = |k: &str| members.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let mut out = String::with_capacity(json.len());
    let time = get("time").and_then(Value::as_str).unwrap_or("");
    // `2026-11-30T12:34:56.789Z` -> `12:34:56.789Z`.
    out.push_str(time.get(11..).unwrap_or(time));
    out.push(' ');
    let level = get("level").and_then(Value::as_str).unwrap_or("info").to_ascii_uppercase();
    out.push_str(&format!("{level:<5}"));
    out.push(' ');
    out.push_str(get("msg").and_then(Value::as_str).unwrap_or(""));
    let mut hint = None;
    for (key, value) in &members {
        if LEFT_OUT.contains(&key.as_str()) {
            continue;
        }
        if key == "hint" {
            hint = Some(value);
            continue;
        }
        out.push(' ');
        out.push_str(key);
        out.push('=');
        value_text(&mut out, value);
    }
    if let Some(hint) = hint {
        out.push_str("\n  hint: ");
        match hint {
            Value::String(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
    }
    out.push('\n');
    out
}

/// A value as `key=` shows it: bare when that cannot be misread.
fn value_text(out: &mut String, value: &Value) {
    match value {
        Value::String(s) if !s.is_empty() && s.chars().all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=') => {
            out.push_str(s)
        }
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        // An error object (pino's serializer): its message says what happened.
        Value::Object(o) if o.get("message").is_some_and(Value::is_string) => value_text(out, &o["message"]),
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fields_in_order_with_quotes_only_when_needed() {
        let line = r#"{"level":"debug","time":"2026-11-30T12:34:56.789Z","pid":7,"name":"meshpipe","component":"engine","msg":"connect failed","id":3,"target":"10.0.0.5:3306","error":"Connection refused (os error 111)","ok":true}"#;
        assert_eq!(
            render(&format!("{line}\n")),
            "12:34:56.789Z DEBUG connect failed component=engine id=3 target=10.0.0.5:3306 error=\"Connection refused (os error 111)\" ok=true\n"
        );
    }

    #[test]
    fn hints_get_their_own_line_and_non_json_passes_through() {
        let line = r#"{"level":"warn","time":"2026-11-30T12:34:56.789Z","msg":"x","hint":"do this","n":[1,2]}"#;
        assert_eq!(render(line), "12:34:56.789Z WARN  x n=[1,2]\n  hint: do this\n");
        assert_eq!(render("not json\n"), "not json\n");
    }
}
