//! Record templates like kcat's `-f`: `eventflow consume --format` prints with them, and
//! the file sink of `eventflow-connect` writes its lines with them, so one template means
//! the same bytes in both.

use std::io::Write;

use super::consumer::ConsumerRecord;

/// The directives a template knows, for the error that names an unknown one.
pub const FORMAT_DIRECTIVES: &str = "%t %p %o %T %k %v %h %% \\n \\t";

/// A template that names a directive it does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown directive %{directive} (known: {FORMAT_DIRECTIVES})")]
pub struct FormatError {
    /// The character after the `%`.
    pub directive: char,
}

/// One part of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Topic,
    Partition,
    Offset,
    Timestamp,
    Key,
    Value,
    Headers,
}

/// A parsed template: `%t` topic, `%p` partition, `%o` offset, `%T` timestamp, `%k` key,
/// `%v` value, `%h` headers (`k=v,…`), `%%` a percent sign, `\n` and `\t` escapes; every
/// other character is written as it is. A missing key or value is written as nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFormat {
    pieces: Vec<Piece>,
}

impl RecordFormat {
    /// Parses `template`; an unknown `%` directive is an error (a `%` at the very end is
    /// text).
    pub fn parse(template: &str) -> Result<RecordFormat, FormatError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            let field = match (c, chars.peek().copied()) {
                ('%', Some(n)) => match n {
                    't' => Some(Piece::Topic),
                    'p' => Some(Piece::Partition),
                    'o' => Some(Piece::Offset),
                    'T' => Some(Piece::Timestamp),
                    'k' => Some(Piece::Key),
                    'v' => Some(Piece::Value),
                    'h' => Some(Piece::Headers),
                    '%' => {
                        text.push('%');
                        chars.next();
                        continue;
                    }
                    other => return Err(FormatError { directive: other }),
                },
                ('\\', Some('n')) => {
                    text.push('\n');
                    chars.next();
                    continue;
                }
                ('\\', Some('t')) => {
                    text.push('\t');
                    chars.next();
                    continue;
                }
                _ => None,
            };
            match field {
                Some(piece) => {
                    chars.next();
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(piece);
                }
                None => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(RecordFormat { pieces })
    }

    /// Writes `r` as the template says.
    pub fn write(&self, out: &mut impl Write, r: &ConsumerRecord) -> std::io::Result<()> {
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.write_all(t.as_bytes())?,
                Piece::Topic => out.write_all(r.topic.as_bytes())?,
                Piece::Partition => write!(out, "{}", r.partition)?,
                Piece::Offset => write!(out, "{}", r.offset)?,
                Piece::Timestamp => write!(out, "{}", r.timestamp)?,
                Piece::Key => out.write_all(r.key.as_deref().unwrap_or_default())?,
                Piece::Value => out.write_all(r.value.as_deref().unwrap_or_default())?,
                Piece::Headers => {
                    for (i, (k, v)) in r.headers.iter().enumerate() {
                        if i > 0 {
                            out.write_all(b",")?;
                        }
                        out.write_all(k)?;
                        out.write_all(b"=")?;
                        out.write_all(v.as_deref().unwrap_or_default())?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition: 2,
            offset: 41,
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"k1")),
            value: Some(Bytes::from_static(b"hello")),
            headers: vec![(Bytes::from_static(b"h"), Some(Bytes::from_static(b"x")))],
        }
    }

    fn render(template: &str) -> String {
        let mut out = Vec::new();
        RecordFormat::parse(template)
            .unwrap()
            .write(&mut out, &record())
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formats_like_kcat() {
        assert_eq!(render("%v\\n"), "hello\n");
        assert_eq!(
            render("%k:%v@%p/%o %T [%h] %t 100%%"),
            "k1:hello@2/41 1700000000000 [h=x] t 100%"
        );
        let unknown = RecordFormat::parse("%v %z").unwrap_err().to_string();
        assert!(unknown.contains("unknown directive %z"), "{unknown}");
        assert_eq!(render("\\t%o"), "\t41");
        assert_eq!(render("50%"), "50%");
    }
}
