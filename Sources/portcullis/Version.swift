/// The release this binary is: `portcullis --version`. Raised with each release; the tests check the format.
let portcullisVersion = "0.17.0"
