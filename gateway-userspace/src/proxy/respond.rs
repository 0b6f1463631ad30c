//! The fixed answer of a `respond` route, made once when the route is
//! compiled.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::Body;
use crate::config::Respond;

pub struct Fixed {
    status: StatusCode,
    body: Bytes,
}

impl Fixed {
    pub fn new(respond: &Respond) -> Self {
        Self {
            status: StatusCode::from_u16(respond.status).expect("validated: 200 to 599"),
            body: Bytes::from(respond.body.clone()),
        }
    }

    pub fn response(&self) -> Response<Body> {
        let mut response = Response::new(
            Full::new(self.body.clone())
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}
