//! `{placeholder}` rendering for recipe URLs and scripts.
//!
//! A placeholder is `{` key `}` where the key is a lowercase identifier with at most
//! one dot (`{version}`, `{arch.node}`, `{mirror.npm}`). Everything else is left as
//! written, so shell syntax passes through: `${var}` (a `$` before the brace), brace
//! groups `{ cmd; }`, expansions `{a,b}`. A key of the placeholder shape that the
//! lookup does not know is an error, which catches typos when the catalog loads.

/// Renders `template`, asking `lookup` for each placeholder's value.
pub(crate) fn render(
    template: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let (before, from_brace) = rest.split_at(open);
        out.push_str(before);
        let after_brace = &from_brace[1..];
        let key = after_brace.find('}').map(|close| &after_brace[..close]);
        match key.filter(|k| !before.ends_with('$') && is_key(k)) {
            Some(key) => {
                let value = lookup(key).ok_or_else(|| format!("unknown placeholder {{{key}}}"))?;
                out.push_str(&value);
                rest = &after_brace[key.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after_brace;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `name` or `name.part`: a lowercase letter first, then lowercase letters, digits,
/// `_` and `-`.
fn is_key(key: &str) -> bool {
    let mut parts = key.split('.');
    let ident = |part: &str| {
        part.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    let first = parts.next().is_some_and(ident);
    let second = parts.next().is_none_or(ident);
    first && second && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(key: &str) -> Option<String> {
        match key {
            "version" => Some("1.2.3".into()),
            "arch.node" => Some("x64".into()),
            "mirror.npm" => Some("https://r.example".into()),
            _ => None,
        }
    }

    #[test]
    fn placeholders_render_and_shell_syntax_passes() {
        let rendered = render(
            "{mirror.npm}/v{version}/node-{arch.node}; ${HOME} { echo; } {a,b} {1..3} {} x{",
            vars,
        )
        .unwrap();
        assert_eq!(
            rendered,
            "https://r.example/v1.2.3/node-x64; ${HOME} { echo; } {a,b} {1..3} {} x{"
        );
    }

    #[test]
    fn unknown_placeholders_are_errors() {
        assert_eq!(
            render("v{verison}", vars).unwrap_err(),
            "unknown placeholder {verison}"
        );
        assert!(render("{mirror.nope}", vars).is_err());
        assert!(render("{a.b.c}", vars).is_ok(), "not a key: left alone");
    }
}
