//! The built-in list of `type: bot-detection`: User-Agent signatures of
//! common crawlers, scrapers, vulnerability scanners and attack tools.
//!
//! Where it comes from: written for xgate from the product tokens these
//! tools put in their User-Agent by default, as their own documentation and
//! public scanner and crawler UA references show them (Kong's bot-detection
//! rules were read as a reference; this list is our own). Each entry is a
//! regex matched ASCII-case-insensitively anywhere in the agent.
//!
//! What is deliberately NOT on it: HTTP libraries and command-line clients
//! (curl, wget, python-requests, Go-http-client, okhttp, Java): they are
//! how APIs are called. Deny them per route with `deny` if you must.
//! Generic crawler words are matched with what follows the product name
//! (`bot/`, `bot;`) so that device names such as `CUBOT` do not match.
//!
//! How to update it: add or remove entries below (one token per line, in
//! its group, with a comment when the token is not self-explanatory), run
//! `cargo test -p gateway-userspace bot_` (the tests compile the list and
//! check it against sample agents of each group and of ordinary browsers),
//! and note the change in docs/policies.md (`bot-detection`). Users who
//! cannot wait for a release add tokens with `deny` and exempt false
//! positives with `allow`, which wins over this list.

pub const SIGNATURES: &[&str] = &[
    // Vulnerability scanners and attack tools.
    "sqlmap",
    "nikto",
    r"nmap scripting engine",
    r"\bnmap\b",
    "masscan",
    "zgrab",
    "zmap",
    "nuclei",
    "wpscan",
    "joomscan",
    "dirbuster",
    "gobuster",
    "feroxbuster",
    r"\bffuf\b",
    "fuzz faster u fool",
    "wfuzz",
    "acunetix",
    "netsparker",
    "nessus",
    "openvas",
    r"\bw3af",
    "havij",
    "arachni",
    "skipfish",
    "sqlninja",
    "commix",
    "fimap",
    "whatweb",
    "webinspect",
    r"\bparos\b",
    r"\bzmeu\b",
    "morfeus",
    "jorgee",
    r"\bhydra\b",
    "grendel-scan",
    "nsauditor",
    r"\bl9explore\b",
    r"\bl9tcpid\b",
    "censysinspect",
    r"expanse, a palo alto",
    r"\bcensys\b",
    // Generic crawler, spider and scraper product names.
    r"bot[/;:)_.+-]",
    r"bot$",
    "spider",
    "crawler",
    r"\bcrawl",
    "scraper",
    r"\bslurp\b",
    "scrapy",
    "archiver",
    "indexer",
    "httrack",
    "webcopier",
    "webzip",
    "teleport ?pro",
    "offline explorer",
    "facebookexternalhit",
    // Crawlers of AI and data-collection services that do not say `bot/`.
    "ccbot",
    "bytespider",
    "anthropic-ai",
    r"meta-externalagent",
    "omgili",
    "diffbot",
    "petalbot",
    // Headless automation.
    "headlesschrome",
    "phantomjs",
    "slimerjs",
    "selenium",
    "puppeteer",
    "playwright",
    // Old scraping libraries that browsers and API clients never send.
    "libwww-perl",
    "lwp-trivial",
    r"python-urllib",
    r"\bmechanize\b",
];

#[cfg(test)]
mod tests {
    use regex::bytes::RegexSetBuilder;

    use super::SIGNATURES;

    fn set() -> regex::bytes::RegexSet {
        RegexSetBuilder::new(SIGNATURES)
            .case_insensitive(true)
            .unicode(false)
            .build()
            .expect("the built-in list compiles")
    }

    #[test]
    fn bot_signatures_match_known_agents() {
        let set = set();
        for agent in [
            "sqlmap/1.7.2#stable (https://sqlmap.org)",
            "Mozilla/5.00 (Nikto/2.1.6) (Evasions:None) (Test:000001)",
            "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)",
            "masscan/1.3 (https://github.com/robertdavidgraham/masscan)",
            "Mozilla/5.0 zgrab/0.x",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Nuclei",
            "WPScan v3.8.22 (https://wpscan.com/wordpress-security-scanner)",
            "Fuzz Faster U Fool v2.1.0-dev",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
            "CCBot/2.0 (https://commoncrawl.org/faq/)",
            "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
            "Scrapy/2.11.0 (+https://scrapy.org)",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
            "libwww-perl/6.72",
            "Mozilla/5.0 (compatible; CensysInspect/1.1; +https://about.censys.io/)",
        ] {
            assert!(set.is_match(agent.as_bytes()), "{agent}");
        }
    }

    #[test]
    fn bot_signatures_leave_browsers_and_api_clients_alone() {
        let set = set();
        for agent in [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
            "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36",
            "curl/8.5.0",
            "Wget/1.21.4",
            "python-requests/2.31.0",
            "Go-http-client/2.0",
            "okhttp/4.12.0",
            "PostmanRuntime/7.37.0",
            "aws-sdk-go-v2/1.26.1 os/linux lang/go#1.22",
        ] {
            assert!(!set.is_match(agent.as_bytes()), "{agent}");
        }
    }
}
