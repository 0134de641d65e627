//! RESP2, the Redis protocol, as far as the `redis://` target needs it: commands are arrays
//! of bulk strings; replies are read from a buffered stream, either whole ([`Value`], for
//! admin commands) or walked piece by piece so that record values are handed out as slices
//! of the read buffer (XREADGROUP's replies).

use std::io::{self, BufRead, Read};

/// Longest header line accepted (`*N`, `$N`, `+…`, `-…`): errors are the long ones.
const MAX_LINE: usize = 64 * 1024;
/// Largest bulk string accepted (Redis's own `proto-max-bulk-len` default is 512 MB).
const MAX_BULK: usize = 512 << 20;
/// Deepest nesting [`read_value`] follows.
const MAX_DEPTH: usize = 8;

/// Appends a command: an array of bulk strings.
pub(super) fn command(buf: &mut Vec<u8>, args: &[&[u8]]) {
    header(buf, b'*', args.len());
    for a in args {
        bulk(buf, a);
    }
}

/// Appends one bulk string.
pub(super) fn bulk(buf: &mut Vec<u8>, data: &[u8]) {
    header(buf, b'$', data.len());
    buf.extend_from_slice(data);
    buf.extend_from_slice(b"\r\n");
}

/// Appends `*N\r\n` or `$N\r\n`.
pub(super) fn header(buf: &mut Vec<u8>, kind: u8, n: usize) {
    buf.push(kind);
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
    buf.extend_from_slice(b"\r\n");
}

/// A reply, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The text of a simple or bulk string.
    pub(super) fn text(&self) -> Option<String> {
        match self {
            Value::Simple(s) => Some(s.clone()),
            Value::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// One header line without its CRLF: the type byte and the rest.
pub(super) fn read_line(r: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<u8> {
    line.clear();
    let n = r.by_ref().take(MAX_LINE as u64).read_until(b'\n', line)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid("a RESP line without CRLF (or too long)"));
    }
    line.truncate(line.len() - 2);
    let kind = line.remove(0);
    Ok(kind)
}

pub(super) fn parse_int(digits: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            invalid(format!(
                "not a RESP integer: {:?}",
                String::from_utf8_lossy(digits)
            ))
        })
}

/// A `$N` or `*N` length; `None` for the null (-1).
pub(super) fn parse_len(digits: &[u8]) -> io::Result<Option<usize>> {
    match parse_int(digits)? {
        -1 => Ok(None),
        n if (0..=MAX_BULK as i64).contains(&n) => Ok(Some(n as usize)),
        n => Err(invalid(format!("RESP length {n} out of range"))),
    }
}

/// Reads `n` bytes of bulk data and its CRLF into `into`.
pub(super) fn read_bulk_into(r: &mut impl BufRead, n: usize, into: &mut Vec<u8>) -> io::Result<()> {
    into.clear();
    into.resize(n + 2, 0);
    r.read_exact(into)?;
    if !into.ends_with(b"\r\n") {
        return Err(invalid("bulk string without CRLF"));
    }
    into.truncate(n);
    Ok(())
}

/// Skips `n` bytes of bulk data and its CRLF.
pub(super) fn skip(r: &mut impl BufRead, n: usize) -> io::Result<()> {
    let mut left = n + 2;
    while left > 0 {
        let available = r.fill_buf()?.len();
        if available == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let k = available.min(left);
        r.consume(k);
        left -= k;
    }
    Ok(())
}

/// Reads one whole reply.
pub(super) fn read_value(r: &mut impl BufRead) -> io::Result<Value> {
    read_nested(r, 0)
}

fn read_nested(r: &mut impl BufRead, depth: usize) -> io::Result<Value> {
    if depth > MAX_DEPTH {
        return Err(invalid("RESP reply nested too deep"));
    }
    let mut line = Vec::new();
    let kind = read_line(r, &mut line)?;
    let text = || String::from_utf8_lossy(&line).into_owned();
    Ok(match kind {
        b'+' => Value::Simple(text()),
        b'-' => Value::Error(text()),
        b':' => Value::Int(parse_int(&line)?),
        b'$' => match parse_len(&line)? {
            None => Value::Bulk(None),
            Some(n) => {
                let mut data = Vec::new();
                read_bulk_into(r, n, &mut data)?;
                Value::Bulk(Some(data))
            }
        },
        b'*' => match parse_len(&line)? {
            None => Value::Array(None),
            Some(n) => Value::Array(Some(
                (0..n)
                    .map(|_| read_nested(r, depth + 1))
                    .collect::<io::Result<_>>()?,
            )),
        },
        other => return Err(invalid(format!("unknown RESP type byte {other:#04x}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut buf = Vec::new();
        command(&mut buf, &[b"XADD", b"t-0", b"*", b"v", b"hello"]);
        assert_eq!(
            buf,
            b"*5\r\n$4\r\nXADD\r\n$3\r\nt-0\r\n$1\r\n*\r\n$1\r\nv\r\n$5\r\nhello\r\n"
        );
        buf.clear();
        header(&mut buf, b'$', 0);
        header(&mut buf, b'*', 1234567);
        assert_eq!(buf, b"$0\r\n*1234567\r\n");
    }

    #[test]
    fn replies_parse_whole() {
        let mut r =
            &b"*3\r\n$2\r\nid\r\n:-5\r\n*2\r\n+OK\r\n$-1\r\n-ERR no such key\r\n*-1\r\n"[..];
        assert_eq!(
            read_value(&mut r).unwrap(),
            Value::Array(Some(vec![
                Value::Bulk(Some(b"id".to_vec())),
                Value::Int(-5),
                Value::Array(Some(vec![Value::Simple("OK".into()), Value::Bulk(None)])),
            ]))
        );
        assert_eq!(
            read_value(&mut r).unwrap(),
            Value::Error("ERR no such key".into())
        );
        assert_eq!(read_value(&mut r).unwrap(), Value::Array(None));
        assert_eq!(
            read_value(&mut r).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn bad_replies_are_errors() {
        for bad in [
            &b"$5\r\nab\r\n"[..],
            b"?x\r\n",
            b"$-7\r\n",
            b":1x\r\n",
            b"+no crlf\n",
        ] {
            assert!(read_value(&mut &bad[..]).is_err(), "{bad:?}");
        }
        let deep = "*1\r\n".repeat(20) + ":1\r\n";
        assert!(read_value(&mut deep.as_bytes()).is_err());
    }
}
