//! JSON with comments (`//`, `/* */`) and trailing commas, turned into
//! plain JSON with every byte offset kept (comments become spaces) so that
//! parse errors still point at the right line and column.

/// Strips comments and trailing commas.
pub fn to_json(input: &str) -> Result<String, String> {
    let b = input.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let mut in_string = false;
    // Position of a comma that may turn out to be trailing.
    let mut pending_comma: Option<usize> = None;
    while i < b.len() {
        let c = b[i];
        if in_string {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_string = true;
                pending_comma = None;
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let start = i;
                i += 2;
                loop {
                    if i + 1 >= b.len() {
                        return Err(format!("unterminated /* comment starting at byte {start}"));
                    }
                    if b[i] == b'*' && b[i + 1] == b'/' {
                        i += 2;
                        break;
                    }
                    i += 1;
                }
                for o in &mut out[start..i] {
                    if *o != b'\n' {
                        *o = b' ';
                    }
                }
            }
            b',' => {
                pending_comma = Some(i);
                i += 1;
            }
            b'}' | b']' => {
                if let Some(p) = pending_comma.take() {
                    out[p] = b' ';
                }
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                pending_comma = None;
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|e| format!("config is not UTF-8: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_comments_and_trailing_commas() {
        let src = r#"{
  // a comment with "quotes"
  "a": "http://x//y", /* block
  comment */ "b": [1, 2,],
  "c": {"d": "/*not a comment*/",},
}"#;
        let json = to_json(src).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["a"], "http://x//y");
        assert_eq!(v["b"], serde_json::json!([1, 2]));
        assert_eq!(v["c"]["d"], "/*not a comment*/");
        assert_eq!(
            json.lines().count(),
            src.lines().count(),
            "line numbers are kept"
        );
    }

    #[test]
    fn escaped_quotes_stay_in_strings() {
        let json = to_json(r#"{"a": "x\"//y"}"#).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["a"], "x\"//y");
    }

    #[test]
    fn unterminated_block_comment_is_an_error() {
        assert!(to_json("{ /* oops }").is_err());
    }
}
