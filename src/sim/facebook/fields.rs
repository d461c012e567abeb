//! Graph API `fields=` parser: `a,b{c,d}.limit(5),e.limit(2){f}`.

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub limit: Option<usize>,
    pub sub: Option<Vec<Field>>,
}

pub fn parse_fields(s: &str) -> Result<Vec<Field>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut pos = 0;
    let fields = parse_list(&chars, &mut pos)?;
    if pos != chars.len() {
        return Err(format!("unexpected '{}' at {pos}", chars[pos]));
    }
    Ok(fields)
}

fn parse_list(c: &[char], pos: &mut usize) -> Result<Vec<Field>, String> {
    let mut out = Vec::new();
    loop {
        let start = *pos;
        while *pos < c.len() && (c[*pos].is_ascii_alphanumeric() || c[*pos] == '_') {
            *pos += 1;
        }
        if start == *pos {
            return Err(format!("expected a field name at {start}"));
        }
        let mut f = Field {
            name: c[start..*pos].iter().collect(),
            limit: None,
            sub: None,
        };
        loop {
            if *pos < c.len() && c[*pos] == '{' {
                *pos += 1;
                f.sub = Some(parse_list(c, pos)?);
                if *pos >= c.len() || c[*pos] != '}' {
                    return Err("missing '}'".into());
                }
                *pos += 1;
            } else if c[*pos..].starts_with(&['.', 'l', 'i', 'm', 'i', 't', '(']) {
                *pos += 7;
                let ns = *pos;
                while *pos < c.len() && c[*pos].is_ascii_digit() {
                    *pos += 1;
                }
                let n: usize = c[ns..*pos]
                    .iter()
                    .collect::<String>()
                    .parse()
                    .map_err(|_| "bad limit".to_string())?;
                if *pos >= c.len() || c[*pos] != ')' {
                    return Err("missing ')'".into());
                }
                *pos += 1;
                f.limit = Some(n);
            } else {
                break;
            }
        }
        out.push(f);
        if *pos < c.len() && c[*pos] == ',' {
            *pos += 1;
        } else {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_fields_with_limits() {
        let f = parse_fields("participants,updated_time,messages.limit(10){message,from}").unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(f[2].limit, Some(10));
        assert_eq!(f[2].sub.as_ref().unwrap()[1].name, "from");
        let g = parse_fields("messages{id}.limit(3)").unwrap();
        assert_eq!(g[0].limit, Some(3));
        assert!(parse_fields("a{b").is_err());
        assert!(parse_fields("a,,b").is_err());
        assert!(parse_fields("a.limit(x)").is_err());
    }
}
