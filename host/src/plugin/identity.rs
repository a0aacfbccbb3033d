//! What a plugin says it is, whatever its file is called: the custom
//! section `switchyard:plugin` of any core module inside the component,
//! holding `NAME` or `NAME@VERSION` in UTF-8 (`least-conn@0.1.0`). Read once
//! when the file is compiled, so that a least-conn build copied over
//! `round-robin.wasm` shows as least-conn in `/status`, the metrics, the
//! dashboard and the reload log. A plugin without the section is shown by
//! its file stem, as before; one whose section is malformed too, with a
//! warning.
//!
//! A Rust guest declares itself with a static in that section:
//!
//! ```text
//! #[unsafe(link_section = "switchyard:plugin")]
//! #[used]
//! static PLUGIN: [u8; 16] = *b"least-conn@0.1.0";
//! ```

use std::fmt;

use wasmparser::{Parser, Payload};

/// The custom section's name.
pub const SECTION: &str = "switchyard:plugin";

/// Longest name, and longest version.
const MAX_NAME: usize = 64;
const MAX_VERSION: usize = 32;

/// A plugin's declared name and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// Letters, digits, `-`, `_` and `.`; 1 to 64 of them.
    pub name: String,
    /// Letters, digits, `.`, `-` and `+`; 1 to 32 of them.
    pub version: Option<String>,
}

impl fmt::Display for Declared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The declaration in the component `bytes`: `Ok(None)` without one,
/// `Err` (why) when the section is there but not as described above.
/// The first section found counts.
pub fn declared(bytes: &[u8]) -> Result<Option<Declared>, String> {
    for payload in Parser::new(0).parse_all(bytes) {
        // The component compiled already: a parse error here is not this
        // module's to report.
        let Ok(payload) = payload else {
            return Ok(None);
        };
        if let Payload::CustomSection(section) = payload
            && section.name() == SECTION
        {
            return parse(section.data()).map(Some);
        }
    }
    Ok(None)
}

fn parse(data: &[u8]) -> Result<Declared, String> {
    let text = std::str::from_utf8(data)
        .map_err(|_| format!("the `{SECTION}` section is not UTF-8 text"))?;
    let (name, version) = match text.split_once('@') {
        Some((name, version)) => (name, Some(version)),
        None => (text, None),
    };
    let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(name_ok) {
        return Err(format!(
            "the `{SECTION}` section says {text:?}: expected NAME or NAME@VERSION, NAME of 1 to {MAX_NAME} letters, digits, `-`, `_` or `.`"
        ));
    }
    let version_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+');
    if let Some(v) = version
        && (v.is_empty() || v.len() > MAX_VERSION || !v.chars().all(version_ok))
    {
        return Err(format!(
            "the `{SECTION}` section says {text:?}: expected a VERSION of 1 to {MAX_VERSION} letters, digits, `.`, `-` or `+` after the `@`"
        ));
    }
    Ok(Declared {
        name: name.to_owned(),
        version: version.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module with one custom section, as the guest's linker writes
    /// it.
    fn module_with(name: &str, data: &[u8]) -> Vec<u8> {
        let mut body = vec![u8::try_from(name.len()).expect("short name")];
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(data);
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        wasm.push(0);
        wasm.push(u8::try_from(body.len()).expect("short section"));
        wasm.extend_from_slice(&body);
        wasm
    }

    #[test]
    fn names_with_and_without_versions_are_read() {
        let wasm = module_with(SECTION, b"least-conn@0.1.0");
        let d = declared(&wasm).expect("valid").expect("declared");
        assert_eq!(d.name, "least-conn");
        assert_eq!(d.version.as_deref(), Some("0.1.0"));
        assert_eq!(d.to_string(), "least-conn@0.1.0");
        let wasm = module_with(SECTION, b"p2c");
        assert_eq!(
            declared(&wasm)
                .expect("valid")
                .expect("declared")
                .to_string(),
            "p2c"
        );
    }

    #[test]
    fn other_sections_and_none_are_no_declaration() {
        assert_eq!(declared(&module_with("producers", b"x")), Ok(None));
        assert_eq!(declared(b"\0asm\x01\0\0\0"), Ok(None));
        assert_eq!(declared(b"not wasm"), Ok(None));
    }

    #[test]
    fn malformed_declarations_say_what_is_expected() {
        for bad in [&b""[..], b"a b", b"x@", b"@1", b"\xff", b"name@1 2"] {
            let e = declared(&module_with(SECTION, bad)).expect_err("malformed");
            assert!(e.contains("switchyard:plugin"), "{e}");
        }
        let long = "n".repeat(65);
        assert!(declared(&module_with(SECTION, long.as_bytes())).is_err());
    }
}
