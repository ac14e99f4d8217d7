//! The admin port's HTTP, as the tools that probe a node speak it (no IO here): one
//! HTTP/1.0 request per connection, answered and closed by the node. `concord health`,
//! `concord drain` and `concord-chaos` write [`request`] to a socket, read until the node
//! closes it, and hand the bytes to [`parse_response`]. A dozen lines instead of an HTTP
//! client crate in every binary; the admin port (axum) is the only server it talks to.

/// Why an answer could not be read. Permanent for these bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The first line is not `HTTP/1.x <code> ...`.
    #[error("not an HTTP answer: {0:?}")]
    NotHttp(String),
}

/// The bytes of `METHOD path HTTP/1.0` with no body.
pub fn request(method: &str, path: &str, host: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

/// The status code and the body (as text, lossily) of a whole answer.
///
/// # Errors
/// [`AnswerError::NotHttp`] when the status line is missing or malformed.
pub fn parse_response(answer: &[u8]) -> Result<(u16, String), AnswerError> {
    let text = String::from_utf8_lossy(answer);
    let first = text.lines().next().unwrap_or_default();
    let mut parts = first.split(' ');
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code.parse::<u16>().ok(),
        _ => None,
    }
    .ok_or_else(|| AnswerError::NotHttp(first.chars().take(80).collect()))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_and_answers() {
        assert_eq!(
            request("POST", "/admin/drain", "127.0.0.1:9090"),
            b"POST /admin/drain HTTP/1.0\r\nHost: 127.0.0.1:9090\r\nContent-Length: 0\r\n\r\n"
        );
        let answer = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\ndraining\n";
        assert_eq!(
            parse_response(answer).unwrap(),
            (503, "draining\n".to_owned())
        );
        assert_eq!(
            parse_response(b"HTTP/1.0 200 OK\r\n").unwrap(),
            (200, String::new())
        );
        assert!(parse_response(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_response(b"").is_err());
    }
}
