//! Errors as one line of human text for the logs: the error and each cause
//! it does not already spell out, joined by `: ` ("cannot connect to
//! upstream 127.0.0.1:9: cannot connect: Connection refused (os error
//! 111)"), never a `{:?}` dump of nested enums.

use std::{error::Error, fmt};

/// Displays an error with its causes; use as `error = %Chain(&e)`.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let own = error.to_string();
            // thiserror's `{source}` in a message already says it.
            if !own.is_empty() && !text.contains(&own) {
                text.push_str(": ");
                text.push_str(&own);
            }
            cause = error.source();
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot connect to upstream: {0}")]
        Spelled(#[source] std::io::Error),
        #[error("request failed")]
        Silent(#[source] std::io::Error),
    }

    #[test]
    fn causes_are_written_once_as_text() {
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let spelled = Chain(&Outer::Spelled(refused())).to_string();
        assert_eq!(spelled, "cannot connect to upstream: connection refused");
        let silent = Chain(&Outer::Silent(refused())).to_string();
        assert_eq!(silent, "request failed: connection refused");
    }
}
